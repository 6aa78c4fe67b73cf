// iotprov on Azure: everything the handler needs, in one resource group.
//
//   az group create -n iotprov -l <region>
//   az deployment group create -g iotprov -f infra/main.bicep -p infra/main.parameters.json
//
// Then `make package && make deploy APP=<functionAppName output>` and
// `infra/post-deploy.sh -g iotprov` (CA into Key Vault, DPS proof of possession, the
// enrollment group, bootstrap secrets) — see docs/deploy.md.
targetScope = 'resourceGroup'

@description('Prefix of every resource name (letters, digits, dashes); a hash of the resource group makes names unique.')
@minLength(2)
@maxLength(12)
param baseName string = 'iotprov'

@description('Region of every resource; it must offer Flex Consumption (az functionapp list-flexconsumption-locations).')
param location string = resourceGroup().location

param tags object = {
  app: 'iotprov'
}

// --- Function App sizing -----------------------------------------------------------------

@description('Memory of one instance, MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Upper bound of instances (40-1000). DPS allows 1,000 registrations/min per DPS instance whatever this is.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100

// --- IoT Hub -------------------------------------------------------------------------------

@allowed([
  'F1'
  'B1'
  'B2'
  'B3'
  'S1'
  'S2'
  'S3'
])
param iotHubSku string = 'S1'

@minValue(1)
param iotHubCapacity int = 1

// --- Private networking ----------------------------------------------------------------------

@description('Private networking: VNet integration of the app, private endpoints for Storage and Key Vault, their public access limited to operatorIpRules.')
param vnetEnabled bool = false

param vnetAddressPrefix string = '10.40.0.0/16'
param appSubnetPrefix string = '10.40.0.0/24'
param privateEndpointSubnetPrefix string = '10.40.1.0/26'

@description('Public IPs/CIDRs (no /31 or /32) still allowed to Storage and Key Vault when vnetEnabled: where the post-deploy script and make deploy run.')
param operatorIpRules array = []

// --- Operator ------------------------------------------------------------------------------

@description('Object ID of the user or group that runs the post-deploy script (az ad signed-in-user show --query id -o tsv); gets Key Vault Secrets Officer on the vault. Empty assigns nothing.')
param operatorPrincipalId string = ''

@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param operatorPrincipalType string = 'User'

// --- Handler settings (README "Settings") ----------------------------------------------------

@description('Enabled device authentication methods, comma-separated, from sas, beam, jwt, x509 (IOTPROV_AUTH_METHODS).')
param authMethods string = 'sas'
param deviceIdTemplate string = '{id}'
param sasMaxTtl string = '24h'
@description('More SAS key groups: skn=secret-name pairs, comma-separated; post-deploy.sh creates the secrets.')
param sasKeyGroups string = ''
param beamPskSecretName string = 'beam-psk'
@allowed([
  'imsi'
  'sim-id'
])
param beamIdentity string = 'imsi'
param beamMaxSkew string = '5m'
param jwtKeysSecretName string = 'jwt-keys'
@description('Required iss of device JWTs when jwt is enabled (https://soracom.io for SORACOM Endorse).')
param jwtIssuer string = ''
@description('Required aud of device JWTs when jwt is enabled.')
param jwtAudience string = ''
param jwtIdentityClaim string = 'sub'
param jwtLeeway string = '1m'
param x509CaSecretName string = 'x509-bootstrap-ca'
@description('\'true\' when x509 is enabled: App Service then requests client certificates and forwards them in X-ARR-ClientCert.')
@allowed([
  'true'
  'false'
])
param x509TrustForwardedCert string = 'false'
@allowed([
  'off'
  'open'
  'allowlist'
])
param devicePolicy string = 'off'
@allowed([
  'ecdsa-p256'
  'ecdsa-p384'
  'rsa-2048'
  'rsa-3072'
])
param keyAlgorithm string = 'ecdsa-p256'
param certValidity string = '8760h'
param keyRetention string = '24h'
param operationRetention string = '720h'
param registrationMinInterval string = '1m'
@description('Must equal host.json extensions.queues.maxDequeueCount.')
param maxDequeueCount string = '5'
param maxAttempts string = '100'
@description('An operation in flight that has not moved for this long is re-queued by the purge timer; at least 3m.')
param stallAfter string = '10m'
@description('Retry-After told to devices while their operation is in flight (1s to 60s).')
param pollInterval string = '2s'
param secretCacheTtl string = '5m'
param caSecretName string = 'iotprov-ca'
param dataKeySecretName string = 'iotprov-data-key'
param sasGroupKeySecretName string = 'sas-group-key'
@allowed([
  'debug'
  'info'
  'warn'
  'error'
])
param logLevel string = 'info'

@description('More app settings, merged last (settings of other authentication methods). Never a secret: secrets live in Key Vault.')
param extraAppSettings object = {}

@description('Days Log Analytics keeps data.')
param logRetentionInDays int = 30

var suffix = uniqueString(resourceGroup().id)
var compact = toLower(replace(baseName, '-', ''))
var names = {
  identity: 'id-${baseName}-${suffix}'
  storage: take('st${compact}${suffix}', 24)
  keyVault: take('kv${compact}${suffix}', 24)
  logAnalytics: 'log-${baseName}-${suffix}'
  appInsights: 'appi-${baseName}-${suffix}'
  plan: 'plan-${baseName}-${suffix}'
  app: 'func-${baseName}-${suffix}'
  iotHub: 'iot-${baseName}-${suffix}'
  dps: 'dps-${baseName}-${suffix}'
  vnet: 'vnet-${baseName}-${suffix}'
}
var deploymentContainerName = 'app-package'
var dpsGlobalEndpoint = 'global.azure-devices-provisioning.net'

module identity 'modules/identity.bicep' = {
  name: 'identity'
  params: {
    name: names.identity
    location: location
    tags: tags
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    name: names.storage
    location: location
    tags: tags
    principalId: identity.outputs.principalId
    deploymentContainerName: deploymentContainerName
    vnetEnabled: vnetEnabled
    operatorIpRules: operatorIpRules
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  params: {
    name: names.keyVault
    location: location
    tags: tags
    principalId: identity.outputs.principalId
    operatorPrincipalId: operatorPrincipalId
    operatorPrincipalType: operatorPrincipalType
    vnetEnabled: vnetEnabled
    operatorIpRules: operatorIpRules
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    logAnalyticsName: names.logAnalytics
    appInsightsName: names.appInsights
    location: location
    tags: tags
    principalId: identity.outputs.principalId
    retentionInDays: logRetentionInDays
  }
}

module iot 'modules/iot.bicep' = {
  name: 'iot'
  params: {
    iotHubName: names.iotHub
    dpsName: names.dps
    location: location
    tags: tags
    iotHubSku: iotHubSku
    iotHubCapacity: iotHubCapacity
  }
}

module network 'modules/network.bicep' = if (vnetEnabled) {
  name: 'network'
  params: {
    name: names.vnet
    location: location
    tags: tags
    addressPrefix: vnetAddressPrefix
    appSubnetPrefix: appSubnetPrefix
    privateEndpointSubnetPrefix: privateEndpointSubnetPrefix
    storageAccountId: storage.outputs.id
    storageAccountName: storage.outputs.name
    keyVaultId: keyVault.outputs.id
    keyVaultName: keyVault.outputs.name
  }
}

// The app reads outputs of the storage, Key Vault and monitoring modules, so it is created
// only after them, their role assignments included: its first cold start can already read.
module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  params: {
    planName: names.plan
    appName: names.app
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    storageQueueEndpoint: storage.outputs.queueEndpoint
    storageTableEndpoint: storage.outputs.tableEndpoint
    deploymentContainerUrl: storage.outputs.deploymentContainerUrl
    appInsightsConnectionString: monitoring.outputs.connectionString
    keyVaultUri: keyVault.outputs.uri
    dpsIdScope: iot.outputs.dpsIdScope
    dpsGlobalEndpoint: dpsGlobalEndpoint
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    appSubnetId: vnetEnabled ? network.outputs.appSubnetId : ''
    authMethods: authMethods
    deviceIdTemplate: deviceIdTemplate
    sasMaxTtl: sasMaxTtl
    sasKeyGroups: sasKeyGroups
    beamPskSecretName: beamPskSecretName
    beamIdentity: beamIdentity
    beamMaxSkew: beamMaxSkew
    jwtKeysSecretName: jwtKeysSecretName
    jwtIssuer: jwtIssuer
    jwtAudience: jwtAudience
    jwtIdentityClaim: jwtIdentityClaim
    jwtLeeway: jwtLeeway
    x509CaSecretName: x509CaSecretName
    x509TrustForwardedCert: x509TrustForwardedCert
    devicePolicy: devicePolicy
    keyAlgorithm: keyAlgorithm
    certValidity: certValidity
    keyRetention: keyRetention
    operationRetention: operationRetention
    registrationMinInterval: registrationMinInterval
    maxDequeueCount: maxDequeueCount
    maxAttempts: maxAttempts
    stallAfter: stallAfter
    pollInterval: pollInterval
    secretCacheTtl: secretCacheTtl
    caSecretName: caSecretName
    dataKeySecretName: dataKeySecretName
    sasGroupKeySecretName: sasGroupKeySecretName
    logLevel: logLevel
    extraAppSettings: extraAppSettings
  }
}

output deviceBaseUrl string = 'https://${functionApp.outputs.defaultHostName}'
output functionAppName string = functionApp.outputs.name
output dpsIdScope string = iot.outputs.dpsIdScope
output dpsGlobalEndpoint string = dpsGlobalEndpoint
output dpsName string = iot.outputs.dpsName
output keyVaultUri string = keyVault.outputs.uri
output keyVaultName string = keyVault.outputs.name
output iotHubHostName string = iot.outputs.iotHubHostName
output iotHubName string = iot.outputs.iotHubName
output storageAccountName string = storage.outputs.name
output caSecretName string = caSecretName
output dataKeySecretName string = dataKeySecretName
output sasGroupKeySecretName string = sasGroupKeySecretName
output authMethods string = authMethods
