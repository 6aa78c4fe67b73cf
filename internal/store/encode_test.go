package store

import (
	"testing"
	"unicode/utf16"
	"unicode/utf8"
)

// FuzzUTF16Len: the counting shortcut agrees with encoding the string, for valid UTF-8
// (marshalOperation checks validity first).
func FuzzUTF16Len(f *testing.F) {
	for _, s := range []string{"", "a", "é", "€", "😀", "-----BEGIN CERTIFICATE-----\nMIIB", "\uffff\U00010000"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !utf8.ValidString(s) {
			return
		}
		if got, want := utf16Len(s), len(utf16.Encode([]rune(s))); got != want {
			t.Fatalf("utf16Len(%q) = %d, want %d", s, got, want)
		}
	})
}
