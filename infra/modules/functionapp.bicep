// The Flex Consumption (FC1, Linux) plan and the Function App running the Go custom
// handler. The app runs its package from a blob container, reads it with the user-assigned
// identity, and every app setting the handler reads (internal/config.Settings) is set
// below — infra/infra_test.go fails when the two lists drift apart or a setting holds a
// secret.

param planName string
param appName string
param location string
param tags object

@description('Resource ID of the user-assigned managed identity.')
param identityId string

@description('Client ID of the user-assigned managed identity.')
param identityClientId string

param storageAccountName string
param storageQueueEndpoint string
param storageTableEndpoint string

@description('URL of the blob container the app runs its package from.')
param deploymentContainerUrl string

param appInsightsConnectionString string
param keyVaultUri string
param dpsIdScope string
param dpsGlobalEndpoint string

@description('Memory of one instance, MB (Flex Consumption sizes).')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int

@description('Upper bound of instances the app scales out to (40-1000).')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int

@description('Subnet delegated to Microsoft.App/environments for VNet integration; empty for none.')
param appSubnetId string

// Handler settings: see the README's settings table for their meaning.
param authMethods string
param deviceIdTemplate string
param sasMaxTtl string
param sasKeyGroups string
param beamPskSecretName string
param beamIdentity string
param beamMaxSkew string
param jwtKeysSecretName string
param jwtIssuer string
param jwtAudience string
param jwtIdentityClaim string
param jwtLeeway string
param x509CaSecretName string
@description('\'true\' turns on client certificates (optional) so App Service forwards them in X-ARR-ClientCert, and the handler believes that header.')
param x509TrustForwardedCert string
param devicePolicy string
param keyAlgorithm string
param certValidity string
param keyRetention string
param operationRetention string
param registrationMinInterval string
param maxDequeueCount string
param maxAttempts string
param stallAfter string
param pollInterval string
param secretCacheTtl string
param caSecretName string
param dataKeySecretName string
param sasGroupKeySecretName string
param logLevel string

@description('More app settings, merged last (e.g. the settings of other authentication methods). Never put a secret here: secrets live in Key Vault.')
param extraAppSettings object

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true // Linux
  }
}

// Not set here, on purpose:
// - AzureWebJobsStorage (a connection string): replaced by the identity-based
//   AzureWebJobsStorage__* settings; the account refuses shared keys anyway.
// - FUNCTIONS_CUSTOMHANDLER_PORT: set by the Functions host at start.
// - IOTPROV_SECRETS_DIR, IOTPROV_JWT_KEYS_FILE: file sources of the local stack; Azure
//   reads those from Key Vault.
// - IOTPROV_LISTEN_ADDR, IOTPROV_TLS_LISTEN_ADDR, IOTPROV_TLS_CERT_FILE,
//   IOTPROV_TLS_KEY_FILE: the local runner's listeners; App Service terminates TLS.
// - IOTPROV_DPS_CA_FILE, IOTPROV_IOTHUB_ROOT_CA_FILE: DPS is verified with the system
//   roots, and devices get the built-in IoT Hub roots (DigiCert Global Root G2 and
//   Microsoft RSA Root CA 2017).
// - FUNCTIONS_WORKER_RUNTIME, FUNCTIONS_EXTENSION_VERSION: Flex Consumption takes the
//   runtime from functionAppConfig.runtime and refuses these settings.
var appSettings = {
  // app-settings:begin
  AzureWebJobsStorage__accountName: storageAccountName
  AzureWebJobsStorage__queueServiceUri: storageQueueEndpoint
  AzureWebJobsStorage__tableServiceUri: storageTableEndpoint
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  AZURE_CLIENT_ID: identityClientId
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  IOTPROV_SECRET_SOURCE: 'keyvault'
  IOTPROV_KEYVAULT_URL: keyVaultUri
  IOTPROV_SECRET_CACHE_TTL: secretCacheTtl
  IOTPROV_CA_SECRET: caSecretName
  IOTPROV_DATA_KEY_SECRET: dataKeySecretName
  IOTPROV_SAS_GROUP_KEY_SECRET: sasGroupKeySecretName
  IOTPROV_AUTH_METHODS: authMethods
  IOTPROV_SAS_MAX_TTL: sasMaxTtl
  IOTPROV_SAS_KEY_GROUPS: sasKeyGroups
  IOTPROV_BEAM_PSK_SECRET: beamPskSecretName
  IOTPROV_BEAM_IDENTITY: beamIdentity
  IOTPROV_BEAM_MAX_SKEW: beamMaxSkew
  IOTPROV_JWT_KEYS_SECRET: jwtKeysSecretName
  IOTPROV_JWT_ISSUER: jwtIssuer
  IOTPROV_JWT_AUDIENCE: jwtAudience
  IOTPROV_JWT_IDENTITY_CLAIM: jwtIdentityClaim
  IOTPROV_JWT_LEEWAY: jwtLeeway
  IOTPROV_X509_CA_SECRET: x509CaSecretName
  IOTPROV_X509_TRUST_FORWARDED_CERT: x509TrustForwardedCert
  IOTPROV_DEVICE_POLICY: devicePolicy
  IOTPROV_DEVICE_ID_TEMPLATE: deviceIdTemplate
  IOTPROV_DPS_ENDPOINT: dpsGlobalEndpoint
  IOTPROV_DPS_ID_SCOPE: dpsIdScope
  IOTPROV_KEY_ALGORITHM: keyAlgorithm
  IOTPROV_CERT_VALIDITY: certValidity
  IOTPROV_KEY_RETENTION: keyRetention
  IOTPROV_OPERATION_RETENTION: operationRetention
  IOTPROV_REGISTRATION_MIN_INTERVAL: registrationMinInterval
  IOTPROV_MAX_DEQUEUE_COUNT: maxDequeueCount
  IOTPROV_MAX_ATTEMPTS: maxAttempts
  IOTPROV_STALL_AFTER: stallAfter
  IOTPROV_POLL_INTERVAL: pollInterval
  IOTPROV_LOG_LEVEL: logLevel
  // app-settings:end
}

resource app 'Microsoft.Web/sites@2024-04-01' = {
  name: appName
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    // For x509 bootstrap certificates: App Service asks for a client certificate and
    // forwards it in X-ARR-ClientCert. Optional, so SAS/Beam/JWT devices are unaffected.
    clientCertEnabled: x509TrustForwardedCert == 'true'
    clientCertMode: 'Optional'
    virtualNetworkSubnetId: empty(appSubnetId) ? null : appSubnetId
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      appSettings: [for s in items(union(appSettings, extraAppSettings)): {
        name: s.key
        value: s.value
      }]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: deploymentContainerUrl
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: 'custom'
        version: '1.0'
      }
    }
  }
}

output name string = app.name
output defaultHostName string = app.properties.defaultHostName
