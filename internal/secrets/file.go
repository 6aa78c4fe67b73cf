package secrets

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// FileSource reads Dir/<name>. Names are validated (Key Vault rules: 1-127 of [0-9a-zA-Z-])
// so no path traversal is possible. A trailing "\n" or "\r\n" is trimmed (files written by
// echo), nothing else.
type FileSource struct{ Dir string }

var _ Source = FileSource{}

// Secret reads the file named name in s.Dir. The file is read on every call: wrap the
// source in Cached if that matters.
func (s FileSource) Secret(ctx context.Context, name string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := CheckName(name); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(s.Dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("secret %q in %s: %w", name, s.Dir, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("secret %q: %w", name, err)
	}
	// Only one line ending is removed: base64 and PEM never end in a blank line that
	// matters, and a PSK with deliberate trailing whitespace must survive.
	if v, ok := bytes.CutSuffix(b, []byte("\r\n")); ok {
		return v, nil
	}
	b, _ = bytes.CutSuffix(b, []byte("\n"))
	return b, nil
}
