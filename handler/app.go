package main

import (
	"bytes"
	"context"
	"crypto/x509"
	_ "embed"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"os"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"
	"github.com/google/uuid"

	"github.com/iotprov/iotprov/internal/api"
	"github.com/iotprov/iotprov/internal/auth"
	"github.com/iotprov/iotprov/internal/ca"
	"github.com/iotprov/iotprov/internal/config"
	"github.com/iotprov/iotprov/internal/dps"
	"github.com/iotprov/iotprov/internal/funcs"
	"github.com/iotprov/iotprov/internal/policy"
	"github.com/iotprov/iotprov/internal/provision"
	"github.com/iotprov/iotprov/internal/queue"
	"github.com/iotprov/iotprov/internal/secrets"
	"github.com/iotprov/iotprov/internal/storageconn"
	"github.com/iotprov/iotprov/internal/store"
)

// defaultIoTHubRoots is what Azure IoT Hub's TLS chains to: DigiCert Global Root G2 and
// Microsoft RSA Root Certificate Authority 2017.
//
//go:embed iothub-roots.pem
var defaultIoTHubRoots string

// maxInvocationBytes bounds an invocation body from the host; our messages are tiny.
const maxInvocationBytes = 1 << 20

// app is the wired service: one of each dependency, shared by both modes.
type app struct {
	// queueService is the queue account; the local runner opens its lease-renewing view of
	// the provision queue (localrun.NewStorageQueue) on it.
	queueService *azqueue.ServiceClient
	log          *slog.Logger
	store        *store.Store
	queue        *queue.Queue
	secrets      *secrets.Cached
	api          *api.Server
	worker       *provision.Worker
	// devices is the device policy table (nil when the policy is off) and hostQueue the
	// local runner's view of the provision queue (nil under the Functions host): both
	// make storage requests the metrics count.
	devices, hostQueue transactionCounter
}

// transactionCounter is anything that counts the storage requests it makes.
type transactionCounter interface{ Transactions() int64 }

// newApp wires the service from cfg. It makes no network call, so the handler answers the
// host's readiness probe at once (cold start).
func newApp(cfg *config.Config, log *slog.Logger) (*app, error) {
	// A managed identity is needed only for identity-based storage; a connection string
	// (Azurite) carries its own key.
	var storageCred azcore.TokenCredential
	if cfg.Storage.AccountName != "" {
		c, err := secrets.NewAzureCredential(cfg.Storage.ClientID)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", config.StorageClientID, err)
		}
		storageCred = c
	}
	tables, queues, err := storageconn.Open(storageconn.Settings{
		ConnectionString: cfg.Storage.ConnectionString,
		AccountName:      cfg.Storage.AccountName,
		QueueServiceURI:  cfg.Storage.QueueServiceURI,
		TableServiceURI:  cfg.Storage.TableServiceURI,
	}, storageCred)
	if err != nil {
		return nil, err // storageconn's errors name the setting at fault already
	}

	var src secrets.Source
	switch cfg.SecretSource {
	case "file":
		src = secrets.FileSource{Dir: cfg.SecretsDir}
	default:
		c, err := secrets.NewAzureCredential(cfg.AzureClientID)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", config.AzureClientID, err)
		}
		if src, err = secrets.NewKeyVaultSource(cfg.KeyVaultURL, c, nil); err != nil {
			return nil, fmt.Errorf("%s: %w", config.KeyVaultURL, err)
		}
	}
	cached := secrets.NewCached(src, cfg.SecretCacheTTL, nil)

	chain, err := authenticators(cfg, cached)
	if err != nil {
		return nil, err
	}
	deviceIDs, err := auth.NewDeviceIDTemplate(cfg.DeviceIDTemplate)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", config.DeviceIDTemplate, err)
	}
	rootCAs, err := iotHubRoots(cfg.IoTHubRootCAFile)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", config.IoTHubRootCAFile, err)
	}
	dpsClient, err := newDPSClient(cfg)
	if err != nil {
		return nil, err
	}
	alg, err := ca.ParseKeyAlgorithm(cfg.KeyAlgorithm)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", config.KeyAlgorithm, err)
	}
	profile, err := ca.NewProfile(ca.ProfileConfig{Validity: cfg.CertValidity})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", config.CertValidity, err)
	}
	regProfile, err := ca.NewProfile(ca.ProfileConfig{Validity: time.Hour})
	if err != nil {
		return nil, err
	}

	st := store.New(tables)
	q := queue.New(queues, queue.Name)
	sealer := &provision.DataKeySealer{Secrets: cached, Name: cfg.DataKeySecret}
	admitter, devices := devicePolicy(cfg, tables)
	a := &app{log: log, store: st, queue: q, queueService: queues, secrets: cached}
	if devices != nil {
		a.devices = devices // not a typed nil in the interface
	}
	a.api = &api.Server{
		Auth:        chain,
		DeviceIDs:   deviceIDs,
		Ops:         st,
		Queue:       q,
		Keys:        sealer,
		RootCAPEM:   rootCAs,
		MinInterval: cfg.RegistrationInterval,
		RetryAfter:  cfg.PollInterval,
		Policy:      admitter,
		NewID:       func() string { return uuid.NewString() },
		Log:         log,
	}
	a.worker = &provision.Worker{
		Ops:             st,
		Queue:           q,
		CA:              &provision.AuthorityLoader{Secrets: cached, Name: cfg.CASecret, Log: log},
		Keys:            sealer,
		DPS:             dpsClient,
		Profile:         profile,
		RegProfile:      regProfile,
		KeyAlgorithm:    alg,
		MaxDequeueCount: int64(cfg.MaxDequeueCount),
		MaxAttempts:     cfg.MaxAttempts,
		DPSTimeout:      2 * time.Minute,
		KeyRetention:    cfg.KeyRetention,
		OpRetention:     cfg.OperationRetention,
		Stalls:          st,
		StallAfter:      cfg.StallAfter,
		Log:             log,
	}
	a.api.Requeue = func(ctx context.Context, op *store.Operation, stalledFor time.Duration) error {
		_, err := a.worker.Requeue(ctx, op, "register", stalledFor)
		return err
	}
	return a, nil
}

// authenticators builds the enabled methods, in the configured order. Every piece of key
// material is read through src (secrets.Cached), so Key Vault is called once per TTL.
func authenticators(cfg *config.Config, src secrets.Source) (auth.Chain, error) {
	secret := func(name string) auth.SecretFunc {
		return func(ctx context.Context) ([]byte, error) { return src.Secret(ctx, name) }
	}
	var chain auth.Chain
	for _, m := range cfg.AuthMethods {
		switch m {
		case "sas":
			groups, err := auth.ParseKeyGroups(cfg.SASKeyGroups)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", config.SASKeyGroups, err)
			}
			chain = append(chain, auth.NewSAS(auth.SASConfig{
				MaxTTL: cfg.SASMaxTTL,
				Keys:   auth.SecretKeyGroups(src.Secret, cfg.SASGroupKey, groups),
			}))
		case "beam":
			psk := secret(cfg.BeamPSKSecret)
			chain = append(chain, auth.NewBeam(auth.BeamConfig{
				// The PSK is text; a trailing newline in a file or a pasted secret is not part of it.
				PSK: func(ctx context.Context) ([]byte, error) {
					b, err := psk(ctx)
					return bytes.TrimSpace(b), err
				},
				Identity: cfg.BeamIdentity,
				MaxSkew:  cfg.BeamMaxSkew,
			}))
		case "jwt":
			keys := secret(cfg.JWTKeysSecret)
			if cfg.JWTKeysFile != "" {
				file := cfg.JWTKeysFile
				if _, err := os.Stat(file); err != nil {
					return nil, fmt.Errorf("%s: %w", config.JWTKeysFile, err)
				}
				// Read through the same TTL cache as every other key, not once per request.
				cached := secrets.NewCached(fileSource(file), cfg.SecretCacheTTL, nil)
				keys = func(ctx context.Context) ([]byte, error) { return cached.Secret(ctx, "jwt-keys-file") }
			}
			chain = append(chain, auth.NewJWT(auth.JWTConfig{
				Keys:          keys,
				Issuer:        cfg.JWTIssuer,
				Audience:      cfg.JWTAudience,
				IdentityClaim: cfg.JWTIdentityClaim,
				Leeway:        cfg.JWTLeeway,
			}))
		case "x509":
			chain = append(chain, auth.NewX509(auth.X509Config{
				Roots:                secret(cfg.X509CASecret),
				TrustForwardedHeader: cfg.X509TrustForwarded,
			}))
		default:
			return nil, fmt.Errorf("%s: method %q is not available", config.AuthMethods, m)
		}
	}
	return chain, nil
}

// devicePolicy returns nil (and no table) when the policy is off, so register makes no
// extra table read; otherwise every register reads the device's entry once.
func devicePolicy(cfg *config.Config, tables *aztables.ServiceClient) (api.Admitter, *policy.Table) {
	if cfg.DevicePolicy == policy.ModeOff {
		return nil, nil
	}
	t := policy.NewTable(tables)
	return &policy.Policy{Mode: cfg.DevicePolicy, Devices: t}, t
}

func iotHubRoots(file string) (string, error) {
	if file == "" {
		return defaultIoTHubRoots, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	if !x509.NewCertPool().AppendCertsFromPEM(b) {
		return "", fmt.Errorf("%s holds no PEM certificate", file)
	}
	return string(b), nil
}

func newDPSClient(cfg *config.Config) (*dps.Client, error) {
	var roots *x509.CertPool
	if cfg.DPSCAFile != "" {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		b, err := os.ReadFile(cfg.DPSCAFile)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", config.DPSCAFile, err)
		}
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("%s: %s holds no PEM certificate", config.DPSCAFile, cfg.DPSCAFile)
		}
		roots = pool
	}
	c, err := dps.New(dps.Config{Endpoint: cfg.DPSEndpoint, IDScope: cfg.DPSIDScope, RootCAs: roots})
	if err != nil {
		return nil, fmt.Errorf("%s/%s: %w", config.DPSEndpoint, config.DPSIDScope, err)
	}
	return c, nil
}

// ensureStorage creates the tables and queues (the local stack; in Azure, infra/ does).
func (a *app) ensureStorage(ctx context.Context) error {
	if err := a.store.EnsureTables(ctx); err != nil {
		return err
	}
	return a.queue.Ensure(ctx)
}

// functionsMux is what the Functions host talks to: readiness on GET /, the device
// routes at their own paths, and the two non-HTTP functions.
func (a *app) functionsMux() http.Handler {
	mux := http.NewServeMux()
	a.api.Routes(mux)
	mux.HandleFunc("POST /provision", a.handleProvision)
	mux.HandleFunc("POST /purge", a.handlePurge)
	mux.HandleFunc("/", a.readyOrNotFound)
	return mux
}

// localMux is the device-facing listener of the local runner. The function routes are
// not on it: only the runner invokes them, in-process.
func (a *app) localMux() http.Handler {
	mux := http.NewServeMux()
	a.api.Routes(mux)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"status":"ok"}`+"\n")
	})
	// Local runner only (loopback): counters and profiles for `make bench`.
	mux.HandleFunc("GET /debug/metrics", a.handleMetrics)
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/heap", pprof.Handler("heap").ServeHTTP)
	mux.HandleFunc("/", a.readyOrNotFound)
	return mux
}

// readyOrNotFound answers the host's readiness probe (any answer to GET / will do) and
// gives every other unknown path the API's JSON 404.
func (a *app) readyOrNotFound(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/" && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"status":"ok"}`+"\n")
		return
	}
	a.api.NotFound(w, r)
}

// handleProvision is the queue-triggered function. Only failures a redelivery can fix
// answer non-2xx; a malformed invocation or message is logged and acknowledged, since
// retrying it would only feed the poison queue.
func (a *app) handleProvision(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxInvocationBytes))
	if err != nil {
		a.ack(w, "provision: unreadable invocation", err)
		return
	}
	trig, err := funcs.ParseQueueTrigger(body, "message")
	if err != nil {
		a.ack(w, "provision: malformed invocation", err)
		return
	}
	msg, err := queue.ParseMessage(trig.Item)
	if err != nil {
		a.ack(w, "provision: malformed queue message", err)
		return
	}
	if err := a.worker.Provision(r.Context(), msg, trig.DequeueCount); err != nil {
		// Logged here: the Functions host shows a failed invocation's Logs nowhere.
		a.log.Error("provision failed; the host will redeliver", "operationId", msg.OperationID,
			"deviceId", msg.DeviceID, "dequeueCount", trig.DequeueCount, "err", err)
		funcs.WriteResult(w, http.StatusInternalServerError, funcs.InvocationResult{
			Logs: []string{"provision failed; the host will redeliver: " + err.Error()}})
		return
	}
	funcs.WriteResult(w, http.StatusOK, funcs.InvocationResult{})
}

func (a *app) handlePurge(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxInvocationBytes))
	if err == nil {
		_, err = funcs.ParseTimerTrigger(body, "timer")
	}
	if err != nil {
		a.ack(w, "purge: malformed invocation", err)
		return
	}
	if err := a.worker.Purge(r.Context()); err != nil {
		a.log.Error("purge failed", "err", err)
		funcs.WriteResult(w, http.StatusInternalServerError, funcs.InvocationResult{Logs: []string{"purge failed: " + err.Error()}})
		return
	}
	funcs.WriteResult(w, http.StatusOK, funcs.InvocationResult{})
}

func (a *app) ack(w http.ResponseWriter, what string, err error) {
	a.log.Warn(what+"; acknowledged", "err", err)
	funcs.WriteResult(w, http.StatusOK, funcs.InvocationResult{Logs: []string{what}})
}

// fileSource is one file as a secret source, whatever the name asked for: the JWT keys
// file (IOTPROV_JWT_KEYS_FILE), whose name need not follow the secret-name rules.
type fileSource string

func (f fileSource) Secret(context.Context, string) ([]byte, error) { return os.ReadFile(string(f)) }
