package provision

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/iotprov/iotprov/internal/ca"
	"github.com/iotprov/iotprov/internal/secrets"
	"github.com/iotprov/iotprov/internal/secrets/kvtest"
	"github.com/iotprov/iotprov/internal/store"
	"github.com/iotprov/iotprov/internal/testenv"
)

const (
	caSecretName = "iotprov-ca"
	cacheTTL     = 5 * time.Minute
)

// vaultFixture is the production read path for the CA: the real azsecrets client
// against the Key Vault protocol server, secrets.Cached with a TTL on a test clock, and
// the AuthorityLoader, feeding a Worker whose other dependencies are fakes.
type vaultFixture struct {
	*fixture
	kv     *kvtest.Server
	cached *secrets.Cached
	clock  *testenv.Clock
	logs   *testenv.SyncBuffer
}

func newVaultFixture(t *testing.T, ops ...store.Operation) *vaultFixture {
	t.Helper()
	f := &vaultFixture{fixture: newFixture(t, ops...), kv: kvtest.NewServer(t), clock: testenv.NewClock(time.Now()), logs: &testenv.SyncBuffer{}}
	src, err := secrets.NewKeyVaultSource(f.kv.URL(), f.kv.Credential(), f.kv.ClientOptions())
	if err != nil {
		t.Fatal(err)
	}
	f.cached = secrets.NewCached(src, cacheTTL, f.clock.Now)
	log := slog.New(slog.NewTextHandler(f.logs, nil))
	f.worker.CA = &AuthorityLoader{Secrets: f.cached, Name: caSecretName, Now: f.clock.Now, Log: log}
	f.worker.Now = f.clock.Now
	f.worker.Log = log
	return f
}

// provision runs one delivery and returns the operation as stored afterwards.
func (f *vaultFixture) provision(t *testing.T, op store.Operation) store.Operation {
	t.Helper()
	if err := f.worker.Provision(context.Background(), msgFor(op), 1); err != nil {
		t.Fatalf("Provision: %v", err)
	}
	return f.ops.get(t, op.DeviceID, op.ID)
}

// hierarchy is a root and the intermediate that signs, as ca init makes them, and the
// bundle an operator uploads.
type hierarchy struct {
	root, signing *ca.Authority
	bundle        string
}

func newHierarchy(t *testing.T, name string, at time.Time, validity time.Duration) hierarchy {
	t.Helper()
	root, err := ca.NewRootCA(name+" root", validity, at)
	if err != nil {
		t.Fatal(err)
	}
	signing, err := ca.NewIntermediateCA(root, name, validity, at)
	if err != nil {
		t.Fatal(err)
	}
	b, err := signing.MarshalPEM()
	if err != nil {
		t.Fatal(err)
	}
	return hierarchy{root: root, signing: signing, bundle: string(b) + string(root.CertificatePEM())}
}

// TestCARotationThroughKeyVault: a new version of the CA secret is used once the cache
// TTL has passed, without restarting anything, and Key Vault is read once per TTL, not
// once per device.
func TestCARotationThroughKeyVault(t *testing.T) {
	ops := []store.Operation{queued("r1"), queued("r2"), queued("r3"), queued("r4")}
	f := newVaultFixture(t, ops...)
	a := newHierarchy(t, "CA A", time.Now(), 365*24*time.Hour)
	b := newHierarchy(t, "CA B", time.Now(), 365*24*time.Hour)
	f.kv.Set(caSecretName, a.bundle)

	issuer := func(op store.Operation) string {
		if op.Status != store.StatusAssigned {
			t.Fatalf("operation %s: %s %s", op.ID, op.Status, op.ErrorCode)
		}
		return chainOf(t, op.CertificatePEM)[0].Issuer.CommonName
	}
	if got := issuer(f.provision(t, ops[0])); got != "CA A" {
		t.Fatalf("first device issued by %q", got)
	}
	checkDeviceChain(t, f.ops.get(t, ops[0].DeviceID, ops[0].ID).CertificatePEM, a.root, ops[0].DeviceID)

	f.kv.Set(caSecretName, b.bundle) // the operator uploads a new version
	f.clock.Advance(cacheTTL / 2)
	if got := issuer(f.provision(t, ops[1])); got != "CA A" {
		t.Fatalf("within the TTL the cached CA should still sign; got %q", got)
	}
	f.clock.Advance(cacheTTL/2 + time.Second)
	op := f.provision(t, ops[2])
	if got := issuer(op); got != "CA B" {
		t.Fatalf("after the TTL the new CA should sign; got %q", got)
	}
	checkDeviceChain(t, op.CertificatePEM, b.root, ops[2].DeviceID)
	if got := issuer(f.provision(t, ops[3])); got != "CA B" {
		t.Fatalf("the rotated CA did not stick; got %q", got)
	}
	// Four devices, two TTL windows: two reads of Key Vault.
	if n := f.cached.Fetches(); n != 2 {
		t.Errorf("Key Vault read %d times, want 2 (once per TTL)", n)
	}
}

// TestBadCAIsRefusedAndOperationsWait: a CA that is expired, not yet valid, not a CA, or
// whose key does not match is refused with a log line naming why; operations are
// deferred (re-enqueued, attempts counted, not failed) and complete with the next good
// version once the TTL has passed.
func TestBadCAIsRefusedAndOperationsWait(t *testing.T) {
	now := time.Now()
	good := newHierarchy(t, "good CA", now, 365*24*time.Hour)
	other := newHierarchy(t, "other CA", now, 365*24*time.Hour)
	expired := newHierarchy(t, "expired CA", now.Add(-3*24*time.Hour), 24*time.Hour)
	future := newHierarchy(t, "future CA", now.Add(72*time.Hour), 365*24*time.Hour)
	leafChain, leafKey, err := ca.NewClientCertificate(good.signing, "not-a-ca", 0, now)
	if err != nil {
		t.Fatal(err)
	}
	otherKey, err := ca.MarshalPrivateKeyPEM(other.signing.Signer)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		first   string // a good bundle served before the bad one, or ""
		bad     string
		wantLog string
	}{
		{"fail/expired", "", expired.bundle, "expired"},
		{"fail/not-yet-valid", "", future.bundle, "not valid until"},
		{"fail/not-a-ca", "", string(leafChain) + string(leafKey), "is not a CA"},
		{"fail/key-does-not-match", "", string(good.signing.CertificatePEM()) + string(otherKey), "does not match"},
		{"fail/rotation-to-a-bad-ca", other.bundle, expired.bundle, "expired"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			op := queued("w1")
			warm := queued("w0")
			f := newVaultFixture(t, op, warm)
			if tc.first != "" {
				f.kv.Set(caSecretName, tc.first)
				if got := f.provision(t, warm); got.Status != store.StatusAssigned {
					t.Fatalf("with the first CA: %s", got.Status)
				}
				f.clock.Advance(cacheTTL + time.Second)
			}
			f.kv.Set(caSecretName, tc.bad)

			got := f.provision(t, op)
			if got.Status != store.StatusQueued || got.Attempts != 1 || got.ErrorCode != "ca_unavailable" || got.CertificatePEM != "" {
				t.Fatalf("with a bad CA: status %s, attempts %d, code %q", got.Status, got.Attempts, got.ErrorCode)
			}
			if n := len(f.queue.sent); n != 1 || f.queue.sent[0].msg != msgFor(op) || f.queue.sent[0].delay < time.Minute {
				t.Fatalf("re-enqueued: %+v", f.queue.sent)
			}
			dpsCalls := len(f.dps.calls)
			logs := f.logs.String()
			if !strings.Contains(logs, "signing CA refused") || !strings.Contains(logs, tc.wantLog) {
				t.Errorf("log does not say the CA was refused because %q:\n%s", tc.wantLog, logs)
			}
			if strings.Contains(logs, "BEGIN") || strings.Contains(logs, "PRIVATE KEY") {
				t.Errorf("log carries PEM:\n%s", logs)
			}

			// The operator uploads a good CA; after the TTL the deferred delivery completes.
			f.kv.Set(caSecretName, good.bundle)
			f.clock.Advance(cacheTTL + time.Second)
			got = f.provision(t, op)
			if got.Status != store.StatusAssigned || got.Attempts != 1 {
				t.Fatalf("with the good CA back: status %s, attempts %d, code %q", got.Status, got.Attempts, got.ErrorCode)
			}
			checkDeviceChain(t, got.CertificatePEM, good.root, op.DeviceID)
			if len(f.dps.calls) != dpsCalls+1 {
				t.Errorf("DPS calls %d, want %d", len(f.dps.calls), dpsCalls+1)
			}
		})
	}
}

// TestCachedCAExpiringWaits: a CA that was good when loaded and expires while it is the
// current version is refused from then on; the operation waits rather than getting a
// certificate from an expired CA, or failing.
func TestCachedCAExpiringWaits(t *testing.T) {
	ops := []store.Operation{queued("e1"), queued("e2")}
	f := newVaultFixture(t, ops...)
	short := newHierarchy(t, "short CA", time.Now(), 2*time.Hour)
	f.kv.Set(caSecretName, short.bundle)
	if got := f.provision(t, ops[0]); got.Status != store.StatusAssigned {
		t.Fatalf("while valid: %s", got.Status)
	}
	f.clock.Advance(3 * time.Hour)
	got := f.provision(t, ops[1])
	if got.Status != store.StatusQueued || got.ErrorCode != "ca_unavailable" || got.Attempts != 1 || len(f.queue.sent) != 1 {
		t.Fatalf("after the CA expired: status %s, code %q, attempts %d, enqueued %d", got.Status, got.ErrorCode, got.Attempts, len(f.queue.sent))
	}
}
