package auth

import (
	"errors"
	"net/http"
	"strings"

	"github.com/iotprov/iotprov/internal/errcode"
)

// maxRegistrationIDLen is 64, not DPS's 128, because the device ID also becomes the
// certificate CN, which RFC 5280 caps at 64 characters (DESIGN.md §3).
const maxRegistrationIDLen = 64

// ValidRegistrationID reports whether id satisfies DPS registration-ID rules as DESIGN.md
// §3 restricts them: 1..64 chars of [A-Za-z0-9-._:], last char alphanumeric or '-'.
func ValidRegistrationID(id string) bool {
	if len(id) == 0 || len(id) > maxRegistrationIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		if !registrationIDChar(id[i]) {
			return false
		}
	}
	last := id[len(id)-1]
	return isAlnum(last) || last == '-'
}

func registrationIDChar(c byte) bool {
	return isAlnum(c) || c == '-' || c == '.' || c == '_' || c == ':'
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

const idPlaceholder = "{id}"

// DeviceIDTemplate turns an identity subject into the device ID, e.g. "myDevice-{id}".
type DeviceIDTemplate struct {
	prefix, suffix string
}

// NewDeviceIDTemplate checks tmpl once at start-up, so that a bad setting stops the
// handler instead of failing every device. "" means "{id}"; the template must contain
// {id} exactly once, and its fixed parts may only use registration-ID characters.
func NewDeviceIDTemplate(tmpl string) (*DeviceIDTemplate, error) {
	if tmpl == "" {
		tmpl = idPlaceholder
	}
	if n := strings.Count(tmpl, idPlaceholder); n != 1 {
		return nil, errors.New("auth: device ID template must contain {id} exactly once")
	}
	prefix, suffix, _ := strings.Cut(tmpl, idPlaceholder)
	for _, part := range []string{prefix, suffix} {
		for i := 0; i < len(part); i++ {
			if !registrationIDChar(part[i]) {
				return nil, errors.New("auth: device ID template may only contain A-Z a-z 0-9 - . _ : around {id}")
			}
		}
	}
	if suffix != "" {
		if last := suffix[len(suffix)-1]; !isAlnum(last) && last != '-' {
			return nil, errors.New("auth: device ID template must end in a letter, digit or '-'")
		}
	}
	if len(prefix)+len(suffix) >= maxRegistrationIDLen {
		return nil, errors.New("auth: device ID template leaves no room for the ID within 64 characters")
	}
	return &DeviceIDTemplate{prefix: prefix, suffix: suffix}, nil
}

// DeviceID applies it; a result that breaks the rules → *errcode.Error 400 errcode.CodeInvalidDeviceID.
func (t *DeviceIDTemplate) DeviceID(subject string) (string, error) {
	id := t.prefix + subject + t.suffix
	if subject == "" || !ValidRegistrationID(id) {
		return "", errcode.New(http.StatusBadRequest, errcode.CodeInvalidDeviceID,
			"The device ID derived from the credential is not a valid registration ID: "+
				"it must be 1 to 64 characters of A-Z a-z 0-9 - . _ : and end in a letter, digit or '-'.")
	}
	return id, nil
}
