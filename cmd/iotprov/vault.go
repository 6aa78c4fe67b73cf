package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"

	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"

	"github.com/iotprov/iotprov/internal/ca"
	"github.com/iotprov/iotprov/internal/secrets"
)

// secretSetter is the part of azsecrets.Client that ca upload uses.
type secretSetter interface {
	SetSecret(ctx context.Context, name string, params azsecrets.SetSecretParameters, opts *azsecrets.SetSecretOptions) (azsecrets.SetSecretResponse, error)
}

var _ secretSetter = (*azsecrets.Client)(nil)

// vaultFactory makes the Key Vault client for vaultURL; clientID names a user-assigned
// managed identity ("" = DefaultAzureCredential: az login, environment, workload
// identity, …).
type vaultFactory func(vaultURL, clientID string) (secretSetter, error)

// azureVault is the real client: the same credential choice as the service
// (secrets.NewAzureCredential), so what works for one works for the other.
func azureVault(vaultURL, clientID string) (secretSetter, error) {
	cred, err := secrets.NewAzureCredential(clientID)
	if err != nil {
		return nil, err
	}
	return azsecrets.NewClient(vaultURL, cred, nil)
}

// pemContentType marks the secret as PEM in the portal; the service does not read it.
const pemContentType = "application/x-pem-file"

func caUpload(e *env, args []string) error {
	fs := newFlagSet(e, "ca upload", "--vault-url https://<vault>.vault.azure.net/ [--name iotprov-ca] [--file ca/signing-ca.pem]", `
Store the signing CA bundle as a new version of a Key Vault secret, which the service
reads as IOTPROV_CA_SECRET and picks up within IOTPROV_SECRET_CACHE_TTL, without a
restart (a CA rotation is just another upload). The bundle is checked first exactly as
the service will check it — certificate chain in order, one private key that matches
the first certificate, a CA valid now — so a bad bundle never reaches the vault.

Authentication is azidentity's DefaultAzureCredential (az login, environment
variables, workload or managed identity) or, with --client-id, that user-assigned
managed identity. The identity needs the 'Key Vault Secrets Officer' role (or a
set-secret access policy) on the vault.`)
	vaultURL := fs.String("vault-url", os.Getenv("IOTPROV_KEYVAULT_URL"), "Key Vault URL (default $IOTPROV_KEYVAULT_URL)")
	name := fs.String("name", envOr("IOTPROV_CA_SECRET", "iotprov-ca"), "secret name (default $IOTPROV_CA_SECRET or iotprov-ca)")
	file := fs.String("file", filepath.Join("ca", signingBundleFile), "the CA bundle: signing CA certificate first, its issuers, its private key")
	clientID := fs.String("client-id", os.Getenv("AZURE_CLIENT_ID"), "client ID of a user-assigned managed identity (default $AZURE_CLIENT_ID; empty uses DefaultAzureCredential)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *vaultURL == "" {
		return errors.New("--vault-url is required")
	}
	if u, err := url.Parse(*vaultURL); err != nil || u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("--vault-url %q: want https://<vault>.vault.azure.net/", *vaultURL)
	}
	bundle, err := os.ReadFile(*file)
	if err != nil {
		return err
	}
	authority, err := ca.ParseAuthority(bundle, e.now())
	if err != nil {
		return fmt.Errorf("%s: not uploaded: %w", *file, err)
	}
	if len(authority.Intermediates) == 0 && authority.Certificate.CheckSignatureFrom(authority.Certificate) == nil {
		fmt.Fprintln(e.errOut, "warning: the signing CA is a self-signed root; an intermediate (iotprov ca init) lets you rotate it without touching DPS")
	}
	newVault := e.newVault
	if newVault == nil {
		newVault = azureVault
	}
	client, err := newVault(*vaultURL, *clientID)
	if err != nil {
		return err
	}
	value := string(bundle)
	ct := pemContentType
	resp, err := client.SetSecret(e.ctx, *name, azsecrets.SetSecretParameters{Value: &value, ContentType: &ct}, nil)
	if err != nil {
		return fmt.Errorf("storing secret %q: %w", *name, err)
	}
	version := ""
	if resp.ID != nil {
		version = resp.ID.Version()
	}
	fmt.Fprintf(e.out, "stored %q version %s: signing CA %q, valid until %s\n",
		*name, version, authority.Certificate.Subject.CommonName, authority.Certificate.NotAfter.UTC().Format("2006-01-02"))
	return nil
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
