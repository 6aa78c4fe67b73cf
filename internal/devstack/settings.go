package devstack

import (
	"encoding/json"
	"fmt"
	"os"
)

// DPSIDScope is the emulator's (and the handler's) ID scope on the local stack.
const DPSIDScope = "0ne00000000"

// Values returns the handler's app settings for the local stack: base (the sample's
// values, or local.settings.json's) with this stack's ports and absolute paths filled in.
func Values(dir string, ports Ports, base map[string]string) map[string]string {
	m := Material{Dir: dir}
	v := map[string]string{}
	for k, val := range base {
		v[k] = val
	}
	v["AzureWebJobsStorage"] = fmt.Sprintf("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"+
		"AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"+
		"BlobEndpoint=http://127.0.0.1:%d/devstoreaccount1;QueueEndpoint=http://127.0.0.1:%d/devstoreaccount1;"+
		"TableEndpoint=http://127.0.0.1:%d/devstoreaccount1;", ports.Blob, ports.Queue, ports.Table)
	v["IOTPROV_SECRET_SOURCE"] = "file"
	v["IOTPROV_SECRETS_DIR"] = m.SecretsDir()
	v["IOTPROV_DPS_ENDPOINT"] = fmt.Sprintf("localhost:%d", ports.DPS)
	v["IOTPROV_DPS_ID_SCOPE"] = DPSIDScope
	v["IOTPROV_DPS_CA_FILE"] = m.ServerRootFile()
	v["IOTPROV_IOTHUB_ROOT_CA_FILE"] = m.ServerRootFile()
	v["IOTPROV_LISTEN_ADDR"] = fmt.Sprintf("127.0.0.1:%d", ports.API)
	apiChain, apiKey := m.ServerCert("api")
	v["IOTPROV_TLS_CERT_FILE"] = apiChain
	v["IOTPROV_TLS_KEY_FILE"] = apiKey
	// The HTTPS listener (x509 bootstrap certificates) has no field in Ports yet: a stack
	// on other ports than the defaults (the tests') drops the sample's fixed address so
	// that two stacks never fight over it, unless the caller chose an address itself.
	if ports != DefaultPorts && v["IOTPROV_TLS_LISTEN_ADDR"] == DefaultTLSListenAddr {
		v["IOTPROV_TLS_LISTEN_ADDR"] = ""
	}
	return v
}

// DefaultTLSListenAddr is local.settings.sample.json's IOTPROV_TLS_LISTEN_ADDR: the local
// runner's HTTPS listener for devices with a bootstrap client certificate.
const DefaultTLSListenAddr = "127.0.0.1:7443"

// ReadSample reads the Values of local.settings.sample.json.
func ReadSample(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc struct {
		Values map[string]string `json:"Values"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return doc.Values, nil
}

// WriteLocalSettings writes local.settings.json (what `func start` reads) with values.
func WriteLocalSettings(path string, values map[string]string) error {
	doc := map[string]any{"IsEncrypted": false, "Values": values}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	return writeFile(path, append(b, '\n'), 0o600)
}
