// The Key Vault holding the signing CA, the data key and the bootstrap-credential secrets
// (SAS group key, Beam PSK, JWT keys). RBAC only (no access policies), soft delete and
// purge protection on: losing the CA key would strand every device. The app may only read
// secrets; the operator who runs the post-deploy script may write them.

param name string
param location string
param tags object

@description('Object ID of the managed identity the app runs as (Key Vault Secrets User).')
param principalId string

@description('Object ID of the user or group that runs the post-deploy script (Key Vault Secrets Officer); empty assigns nothing.')
param operatorPrincipalId string

@description('Principal type of operatorPrincipalId.')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param operatorPrincipalType string

@description('When true, the vault refuses public traffic except from operatorIpRules; the app reaches it through a private endpoint.')
param vnetEnabled bool

@description('Public IPs or CIDR ranges still allowed when vnetEnabled.')
param operatorIpRules array

var ipRules = [for ip in operatorIpRules: {
  value: ip
}]

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
    networkAcls: vnetEnabled ? {
      bypass: 'AzureServices'
      defaultAction: 'Deny'
      ipRules: ipRules
    } : {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

var keyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6'
var keyVaultSecretsOfficer = 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'

resource appReadsSecrets 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, principalId, keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUser)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource operatorWritesSecrets 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorPrincipalId)) {
  name: guid(vault.id, operatorPrincipalId, keyVaultSecretsOfficer)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsOfficer)
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
  }
}

output id string = vault.id
output name string = vault.name
output uri string = vault.properties.vaultUri
