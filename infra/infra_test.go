// Package infra_test checks the Bicep in infra/ against the code, since no Bicep compiler
// runs here: the app settings the Function App gets are exactly the ones the handler reads
// (internal/config.Settings), none holds a secret, every module call passes the module's
// parameters and reads only outputs it declares, every resource API version is one that
// exists, and the storage and vault hardening the design asks for is in place.
package infra_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/iotprov/iotprov/internal/config"
	"github.com/iotprov/iotprov/internal/queue"
	"github.com/iotprov/iotprov/internal/store"
)

// notInAzure are settings the handler reads that an Azure deployment leaves unset, with why.
var notInAzure = map[string]string{
	config.StorageConnection: "a connection string with an account key; the account refuses shared keys and the identity-based AzureWebJobsStorage__* settings replace it",
	config.CustomHandlerPort: "set by the Functions host when it starts the handler",
	config.SecretsDir:        "the file secret source of the local stack; Azure uses Key Vault",
	config.JWTKeysFile:       "a file source of the local stack; Azure reads the keys from Key Vault (IOTPROV_JWT_KEYS_SECRET)",
	config.TLSListenAddr:     "the local runner's HTTPS listener; App Service terminates TLS and forwards client certificates",
	config.TLSCertFile:       "the local runner's HTTPS listener",
	config.TLSKeyFile:        "the local runner's HTTPS listener",
	config.ListenAddr:        "the local runner's address; under the Functions host the handler listens on FUNCTIONS_CUSTOMHANDLER_PORT",
	config.DPSCAFile:         "extra roots for the local DPS emulator; the real DPS chains to the system roots",
	config.IoTHubRootCAFile:  "the built-in IoT Hub roots (DigiCert Global Root G2, Microsoft RSA Root CA 2017) are what Azure IoT Hub chains to",
}

// hostOnly are settings infra/ sets that the Functions host reads, not the handler.
var hostOnly = map[string]string{
	"AzureWebJobsStorage__credential":           "the host's identity-based storage connection uses the managed identity",
	"APPLICATIONINSIGHTS_CONNECTION_STRING":     "where the host sends telemetry (no key: local auth is off)",
	"APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "the host authenticates telemetry with the managed identity",
}

// flexRefuses are settings a Flex Consumption app must not have.
var flexRefuses = []string{"FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION", "WEBSITE_RUN_FROM_PACKAGE",
	"WEBSITE_CONTENTAZUREFILECONNECTIONSTRING", "WEBSITE_CONTENTSHARE", "AzureWebJobsStorage"}

// apiVersions is every resource type infra/ may use, at the version checked to exist
// against the published resource schemas (Azure/bicep-types-az generated/<provider>/<version>):
// use one version per type so a module cannot silently mix them.
var apiVersions = map[string]string{
	"Microsoft.ManagedIdentity/userAssignedIdentities":          "2023-01-31",
	"Microsoft.Storage/storageAccounts":                         "2023-05-01",
	"Microsoft.Storage/storageAccounts/blobServices":            "2023-05-01",
	"Microsoft.Storage/storageAccounts/blobServices/containers": "2023-05-01",
	"Microsoft.Storage/storageAccounts/queueServices":           "2023-05-01",
	"Microsoft.Storage/storageAccounts/queueServices/queues":    "2023-05-01",
	"Microsoft.Storage/storageAccounts/tableServices":           "2023-05-01",
	"Microsoft.Storage/storageAccounts/tableServices/tables":    "2023-05-01",
	"Microsoft.KeyVault/vaults":                                 "2023-07-01",
	"Microsoft.OperationalInsights/workspaces":                  "2023-09-01",
	"Microsoft.Insights/components":                             "2020-02-02",
	"Microsoft.Web/serverfarms":                                 "2024-04-01", // first GA version with FlexConsumption + functionAppConfig: 2023-12-01
	"Microsoft.Web/sites":                                       "2024-04-01",
	"Microsoft.Devices/IotHubs":                                 "2023-06-30",
	"Microsoft.Devices/provisioningServices":                    "2022-12-12",
	"Microsoft.Authorization/roleAssignments":                   "2022-04-01",
	"Microsoft.Network/virtualNetworks":                         "2023-11-01",
	"Microsoft.Network/privateEndpoints":                        "2023-11-01",
	"Microsoft.Network/privateEndpoints/privateDnsZoneGroups":   "2023-11-01",
	"Microsoft.Network/privateDnsZones":                         "2020-06-01",
	"Microsoft.Network/privateDnsZones/virtualNetworkLinks":     "2020-06-01",
}

// Built-in role definition IDs (learn.microsoft.com/azure/role-based-access-control/built-in-roles).
var roleIDs = map[string]string{
	"Storage Blob Data Owner":        "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
	"Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
	"Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
	"Key Vault Secrets User":         "4633458b-17de-408a-b874-0445c86b69e6",
	"Key Vault Secrets Officer":      "b86a8fe4-44ce-4948-aee5-eccb2c155cd7", // the operator, optional
	"Monitoring Metrics Publisher":   "3913510d-42f4-4e42-8a64-420c390055eb",
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// bicepFiles maps each .bicep file of infra/ to its text.
func bicepFiles(t *testing.T) map[string]string {
	t.Helper()
	paths, err := filepath.Glob("*.bicep")
	if err != nil {
		t.Fatal(err)
	}
	more, _ := filepath.Glob(filepath.Join("modules", "*.bicep"))
	files := map[string]string{}
	for _, p := range append(paths, more...) {
		files[p] = read(t, p)
	}
	if len(files) < 2 {
		t.Fatalf("found only %d Bicep files", len(files))
	}
	return files
}

var settingLine = regexp.MustCompile(`^\s*([A-Za-z_][A-Za-z0-9_]*)\s*:\s*(.+?)\s*$`)

// appSettings returns the Function App's settings (name → Bicep expression) from the
// app-settings block of modules/functionapp.bicep.
func appSettings(t *testing.T) map[string]string {
	t.Helper()
	text := read(t, filepath.Join("modules", "functionapp.bicep"))
	begin := strings.Index(text, "// app-settings:begin")
	end := strings.Index(text, "// app-settings:end")
	if begin < 0 || end < begin {
		t.Fatal("modules/functionapp.bicep: no // app-settings:begin … // app-settings:end block")
	}
	if !strings.Contains(text, "items(union(appSettings, extraAppSettings))") {
		t.Fatal("modules/functionapp.bicep: the appSettings block is not what the site's siteConfig.appSettings uses")
	}
	out := map[string]string{}
	for _, line := range strings.Split(text[begin:end], "\n")[1:] {
		if strings.TrimSpace(line) == "" || strings.HasPrefix(strings.TrimSpace(line), "//") {
			continue
		}
		m := settingLine.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("modules/functionapp.bicep: app setting line not understood: %q", line)
		}
		if _, dup := out[m[1]]; dup {
			t.Errorf("app setting %s set twice", m[1])
		}
		out[m[1]] = m[2]
	}
	return out
}

// The settings the handler reads and the settings infra/ sets cannot drift apart.
func TestAppSettingsMatchConfig(t *testing.T) {
	got := appSettings(t)
	declared := map[string]bool{}
	for _, s := range config.Settings {
		declared[s.Name] = true
		_, set := got[s.Name]
		switch reason, skip := notInAzure[s.Name]; {
		case skip && set:
			t.Errorf("infra sets %s, which an Azure deployment must leave unset: %s", s.Name, reason)
		case !skip && !set:
			t.Errorf("infra does not set %s, which the handler reads (%s): add it to modules/functionapp.bicep", s.Name, s.Doc)
		}
	}
	for name := range notInAzure {
		if !declared[name] {
			t.Errorf("notInAzure lists %s, which config.Settings no longer declares", name)
		}
	}
	for name := range got {
		if !declared[name] && hostOnly[name] == "" {
			t.Errorf("infra sets %s, which neither the handler (config.Settings) nor the host reads", name)
		}
	}
	for _, name := range flexRefuses {
		if _, ok := got[name]; ok {
			t.Errorf("infra sets %s, which a Flex Consumption app must not have", name)
		}
	}
	if v := got["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"]; !strings.Contains(v, "Authorization=AAD") {
		t.Errorf("Application Insights ingestion is not identity-based: %s", v)
	}
	if v := got["AzureWebJobsStorage__credential"]; v != "'managedidentity'" {
		t.Errorf("AzureWebJobsStorage__credential = %s, want 'managedidentity'", v)
	}
	if got[config.StorageClientID] != "identityClientId" || got[config.AzureClientID] != "identityClientId" {
		t.Errorf("storage and Key Vault must both use the user-assigned identity: %s=%s %s=%s",
			config.StorageClientID, got[config.StorageClientID], config.AzureClientID, got[config.AzureClientID])
	}
	if got[config.SecretSource] != "'keyvault'" {
		t.Errorf("%s = %s, want 'keyvault'", config.SecretSource, got[config.SecretSource])
	}
}

// No app setting holds a secret: no keys, no connection strings with keys, no list*()
// of keys, no @secure() values. Secrets live in Key Vault; the settings name them.
func TestAppSettingsHoldNoSecret(t *testing.T) {
	forbidden := regexp.MustCompile(`(?i)list\w*\(|AccountKey|SharedAccessKey|SharedAccessSignature|sig=|BEGIN [A-Z ]*PRIVATE KEY|[A-Za-z0-9+/]{40,}={0,2}`)
	for name, expr := range appSettings(t) {
		if forbidden.MatchString(expr) {
			t.Errorf("app setting %s = %s looks like (or derives from) a secret", name, expr)
		}
	}
	for path, text := range bicepFiles(t) {
		if strings.Contains(text, "@secure()") && path == filepath.Join("modules", "functionapp.bicep") {
			t.Errorf("%s takes a @secure() parameter: a secret would end up in an app setting", path)
		}
		if regexp.MustCompile(`(?m)^output .*(?i:key|connectionString|secret)\w* string = .*list\w*\(`).MatchString(text) {
			t.Errorf("%s outputs a key", path)
		}
	}
	var params struct {
		Parameters map[string]struct{ Value any } `json:"parameters"`
	}
	if err := json.Unmarshal([]byte(read(t, "main.parameters.json")), &params); err != nil {
		t.Fatal(err)
	}
	main := read(t, "main.bicep")
	for name, p := range params.Parameters {
		if !regexp.MustCompile(`(?m)^param ` + name + ` `).MatchString(main) {
			t.Errorf("main.parameters.json sets %s, which main.bicep does not declare", name)
		}
		if s, ok := p.Value.(string); ok && forbidden.MatchString(s) {
			t.Errorf("main.parameters.json %s looks like a secret", name)
		}
	}
}

// Handler defaults in main.bicep equal the code's defaults, so a deployment with default
// parameters behaves like the documented defaults.
func TestParameterDefaultsMatchConfig(t *testing.T) {
	main := read(t, "main.bicep")
	fa := read(t, filepath.Join("modules", "functionapp.bicep"))
	got := appSettings(t)
	defaults := map[string]string{}
	for _, s := range config.Settings {
		defaults[s.Name] = s.Default
	}
	for name, expr := range got {
		def, ok := defaults[name]
		if !ok || !regexp.MustCompile(`^[a-z][A-Za-z0-9]*$`).MatchString(expr) {
			continue // a literal or derived value, or a host setting
		}
		// The module parameter is passed from main.bicep's parameter of the same name.
		if !regexp.MustCompile(`(?m)^param ` + expr + ` `).MatchString(fa) {
			t.Errorf("app setting %s uses %s, which modules/functionapp.bicep does not declare", name, expr)
			continue
		}
		m := regexp.MustCompile(`(?m)^param ` + expr + ` (string|int) = '?([^'\n]*)'?$`).FindStringSubmatch(main)
		if m == nil {
			continue // from another module's output, not a parameter
		}
		if def != "" && m[2] != def {
			t.Errorf("main.bicep param %s defaults to %q, but %s defaults to %q", expr, m[2], name, def)
		}
	}
	var host struct {
		Extensions struct {
			Queues struct{ MaxDequeueCount int } `json:"queues"`
		} `json:"extensions"`
	}
	if err := json.Unmarshal([]byte(read(t, filepath.Join("..", "host.json"))), &host); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(main, "param maxDequeueCount string = '"+itoa(host.Extensions.Queues.MaxDequeueCount)+"'") {
		t.Errorf("main.bicep maxDequeueCount default differs from host.json maxDequeueCount %d", host.Extensions.Queues.MaxDequeueCount)
	}
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

var (
	moduleCall  = regexp.MustCompile(`(?m)^module (\w+) '([^']+)'`)
	paramDecl   = regexp.MustCompile(`(?m)^param (\w+) [\w.]+( = )?`)
	outputDecl  = regexp.MustCompile(`(?m)^output (\w+) `)
	passedParam = regexp.MustCompile(`(?m)^    (\w+):`)
	outputRef   = regexp.MustCompile(`\b(\w+)\.outputs\.(\w+)`)
)

// With no Bicep compiler here, check what it would: each module call passes every
// parameter the module requires and none it lacks, and reads only outputs it declares.
func TestModuleCallsMatchModules(t *testing.T) {
	main := read(t, "main.bicep")
	modules := map[string]string{} // symbol → module text
	calls := moduleCall.FindAllStringSubmatchIndex(main, -1)
	if len(calls) < 6 {
		t.Fatalf("main.bicep calls %d modules, want the identity, storage, key vault, monitoring, iot, network and function app ones", len(calls))
	}
	for i, c := range calls {
		symbol, path := main[c[2]:c[3]], main[c[4]:c[5]]
		text := read(t, path)
		modules[symbol] = text
		body := main[c[1]:]
		if i+1 < len(calls) {
			body = main[c[1]:calls[i+1][0]]
		}
		start := strings.Index(body, "  params: {")
		end := strings.Index(body, "\n  }")
		if start < 0 || end < start {
			t.Fatalf("module %s: no params block", symbol)
		}
		passed := map[string]bool{}
		for _, m := range passedParam.FindAllStringSubmatch(body[start:end], -1) {
			passed[m[1]] = true
		}
		declared := map[string]bool{}
		for _, m := range paramDecl.FindAllStringSubmatch(text, -1) {
			declared[m[1]] = true
			if m[2] == "" && !passed[m[1]] {
				t.Errorf("module %s (%s): required parameter %s not passed", symbol, path, m[1])
			}
		}
		for p := range passed {
			if !declared[p] {
				t.Errorf("module %s (%s): passes %s, which the module does not declare", symbol, path, p)
			}
		}
	}
	for _, m := range outputRef.FindAllStringSubmatch(main, -1) {
		text, ok := modules[m[1]]
		if !ok {
			t.Errorf("main.bicep reads %s.outputs.%s of no module", m[1], m[2])
			continue
		}
		found := false
		for _, o := range outputDecl.FindAllStringSubmatch(text, -1) {
			found = found || o[1] == m[2]
		}
		if !found {
			t.Errorf("main.bicep reads %s.outputs.%s, which that module does not declare", m[1], m[2])
		}
	}
	// The outputs the issue asks for.
	for _, name := range []string{"deviceBaseUrl", "dpsIdScope", "dpsGlobalEndpoint", "keyVaultUri", "iotHubHostName"} {
		if !regexp.MustCompile(`(?m)^output ` + name + ` string = `).MatchString(main) {
			t.Errorf("main.bicep lacks output %s", name)
		}
	}
}

var resourceDecl = regexp.MustCompile(`(?m)^resource \w+ '([\w./]+)@([\w-]+)'`)

// Every resource uses an API version from the checked list.
func TestAPIVersionsExist(t *testing.T) {
	seen := map[string]bool{}
	for path, text := range bicepFiles(t) {
		for _, m := range resourceDecl.FindAllStringSubmatch(text, -1) {
			seen[m[1]] = true
			want, ok := apiVersions[m[1]]
			switch {
			case !ok:
				t.Errorf("%s: resource type %s is not in the checked list (infra_test.go apiVersions): check its API versions, then add it", path, m[1])
			case m[2] != want:
				t.Errorf("%s: %s@%s, want the checked version %s", path, m[1], m[2], want)
			}
		}
		if n := strings.Count(text, "\nresource "); n != len(resourceDecl.FindAllString(text, -1)) {
			t.Errorf("%s: %d resources, %d understood by this test", path, n, len(resourceDecl.FindAllString(text, -1)))
		}
	}
	var unused []string
	for typ := range apiVersions {
		if !seen[typ] {
			unused = append(unused, typ)
		}
	}
	sort.Strings(unused)
	if len(unused) > 0 {
		t.Errorf("apiVersions lists types infra/ does not use: %v", unused)
	}
}

// Least privilege: the four data roles of the design (and Monitoring Metrics Publisher
// for identity-based telemetry), each assigned on its resource, never the group.
func TestRoleAssignmentsScopedToResources(t *testing.T) {
	all := ""
	for path, text := range bicepFiles(t) {
		all += text
		for _, block := range strings.Split(text, "\nresource ")[1:] {
			if !strings.Contains(strings.SplitN(block, "\n", 2)[0], "Microsoft.Authorization/roleAssignments@") {
				continue
			}
			if !regexp.MustCompile(`\n  scope: \w+\n`).MatchString(block) {
				t.Errorf("%s: a role assignment without a resource scope (it would apply to the whole group): %.80s", path, block)
			}
		}
		if strings.Contains(text, "resourceGroup().id, principalId") || strings.Contains(text, "scope: resourceGroup()") {
			t.Errorf("%s: a role assignment at resource-group scope", path)
		}
	}
	for name, id := range roleIDs {
		if !strings.Contains(all, "'"+id+"'") {
			t.Errorf("role %s (%s) is not assigned", name, id)
		}
	}
	for _, broad := range []string{"b24988ac-6180-42a0-ab88-20f7382dd24c", "8e3af657-a8ff-443c-a75c-2fe8c4bcb635", "17d1049b-9a84-46fb-8f53-869881c3d3ab", "00482a5a-887f-4fb3-b363-3b7fe8e74483"} {
		if strings.Contains(all, broad) { // Contributor, Owner, Storage Account Contributor, Key Vault Administrator
			t.Errorf("a broad role %s is assigned", broad)
		}
	}
}

// The storage account and the vault are hardened as the design says, and the queue and
// table names are the code's.
func TestHardeningAndNames(t *testing.T) {
	st := read(t, filepath.Join("modules", "storage.bicep"))
	kv := read(t, filepath.Join("modules", "keyvault.bicep"))
	fa := read(t, filepath.Join("modules", "functionapp.bicep"))
	mon := read(t, filepath.Join("modules", "monitoring.bicep"))
	want := map[string][]string{
		"storage":      {"allowSharedKeyAccess: false", "minimumTlsVersion: 'TLS1_2'", "allowBlobPublicAccess: false", "supportsHttpsTrafficOnly: true"},
		"key vault":    {"enableRbacAuthorization: true", "enableSoftDelete: true", "enablePurgeProtection: true"},
		"function app": {"name: 'FC1'", "tier: 'FlexConsumption'", "name: 'custom'", "version: '1.0'", "type: 'UserAssignedIdentity'", "type: 'blobContainer'", "httpsOnly: true", "instanceMemoryMB: instanceMemoryMB", "maximumInstanceCount: maximumInstanceCount"},
		"monitoring":   {"DisableLocalAuth: true", "WorkspaceResourceId: workspace.id"},
	}
	texts := map[string]string{"storage": st, "key vault": kv, "function app": fa, "monitoring": mon}
	for what, needles := range want {
		for _, n := range needles {
			if !strings.Contains(texts[what], n) {
				t.Errorf("%s: lacks %q", what, n)
			}
		}
	}
	for _, name := range []string{queue.Name, queue.Name + queue.PoisonSuffix, store.OperationsTable, store.DevicesTable} {
		if !strings.Contains(st, "name: '"+name+"'") {
			t.Errorf("storage.bicep does not create %q", name)
		}
	}
	var fn struct {
		Bindings []struct{ QueueName, Connection string }
	}
	if err := json.Unmarshal([]byte(read(t, filepath.Join("..", "functions", "provision", "function.json"))), &fn); err != nil {
		t.Fatal(err)
	}
	if len(fn.Bindings) == 0 || fn.Bindings[0].QueueName != queue.Name || fn.Bindings[0].Connection != config.StorageConnection {
		t.Errorf("functions/provision/function.json binds %+v; infra creates %s and sets %s__*", fn.Bindings, queue.Name, config.StorageConnection)
	}
}
