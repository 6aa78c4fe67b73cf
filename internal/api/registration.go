package api

import (
	"errors"
	"net/http"

	"github.com/iotprov/iotprov/internal/errcode"
	"github.com/iotprov/iotprov/internal/keyseal"
	"github.com/iotprov/iotprov/internal/store"
)

// assignedResponse carries Krypton's field names.
type assignedResponse struct {
	OperationID       string `json:"operationId"`
	Status            string `json:"status"`
	DeviceID          string `json:"deviceId"`
	Host              string `json:"host"`
	Certificate       string `json:"certificate"`
	PrivateKey        string `json:"privateKey,omitempty"`
	RootCACertificate string `json:"rootCaCertificate"`
}

type failedResponse struct {
	OperationID string      `json:"operationId"`
	Status      string      `json:"status"`
	Error       errorDetail `json:"error"`
}

// maxOperationIDLen bounds what reaches storage from the path.
const maxOperationIDLen = 64

func (s *Server) handleRegistration(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		s.methodNotAllowed(w, r, http.MethodGet)
		return
	}
	identity, deviceID, err := s.authenticate(r)
	if err != nil {
		s.renderError(w, r, err)
		return
	}
	// Every answer from here may carry key material or reveal state: never cache it.
	w.Header().Set("Cache-Control", "no-store")
	notFound := errcode.New(http.StatusNotFound, errcode.CodeOperationNotFound, "No such operation.")
	opID := r.PathValue("operationId")
	if !validOperationID(opID) {
		s.renderError(w, r, notFound)
		return
	}
	op, err := s.Ops.GetOperation(r.Context(), deviceID, opID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		s.renderError(w, r, notFound)
		return
	case err != nil:
		s.renderError(w, r, unavailable(err))
		return
	case op.Identity != identity.Key():
		// Same device ID reached through another credential: still not the caller's.
		s.renderError(w, r, notFound)
		return
	}
	switch op.Status {
	case store.StatusAssigned:
		s.renderAssigned(w, r, op)
	case store.StatusFailed:
		renderJSON(w, http.StatusOK, failedResponse{OperationID: op.ID, Status: string(store.StatusFailed),
			Error: errorDetail{Code: op.ErrorCode, Message: op.ErrorMessage}})
	default:
		setRetryAfter(w, s.RetryAfter)
		renderJSON(w, http.StatusAccepted, operationStatus{OperationID: op.ID, Status: statusAssigning})
	}
}

func (s *Server) renderAssigned(w http.ResponseWriter, r *http.Request, op *store.Operation) {
	res := assignedResponse{
		OperationID:       op.ID,
		Status:            string(store.StatusAssigned),
		DeviceID:          op.AssignedDeviceID,
		Host:              op.Host,
		Certificate:       op.CertificatePEM,
		RootCACertificate: s.RootCAPEM,
	}
	if op.CSR == nil {
		if op.SealedKey == nil {
			s.renderError(w, r, errcode.New(http.StatusGone, CodeCredentialsExpired,
				"The private key of this operation was erased after its retention period; register again."))
			return
		}
		key, err := s.Keys.Open(r.Context(), op.SealedKey, op.ID, op.DeviceID)
		if errors.Is(err, keyseal.ErrOpen) {
			// Sealed under a data key that is no longer current (rotated), or damaged:
			// no retry will open it, so say so instead of 503 until purge erases it.
			s.renderError(w, r, errcode.Wrap(err, http.StatusGone, CodeCredentialsExpired,
				"The private key of this operation can no longer be decrypted (the data key changed); register again."))
			return
		}
		if err != nil {
			s.renderError(w, r, unavailable(err))
			return
		}
		res.PrivateKey = string(key)
	}
	renderJSON(w, http.StatusOK, res)
}

// CodeCredentialsExpired: the operation's server-generated key was purged, or can no
// longer be decrypted.
const CodeCredentialsExpired = "credentials_expired"

// validOperationID accepts the IDs register makes (UUIDs) and anything of the same
// alphabet, so a malformed ID costs no storage read.
func validOperationID(id string) bool {
	if id == "" || len(id) > maxOperationIDLen {
		return false
	}
	for _, c := range id {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' || c == '-') {
			return false
		}
	}
	return true
}
