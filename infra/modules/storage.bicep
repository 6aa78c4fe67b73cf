// The storage account of the Function App: the Functions host's own state, the
// deployment container Flex Consumption runs the package from, the provision-requests
// queue (and the poison queue the host moves failed messages to) and the operations and
// devices tables. Shared-key access is off: everything authenticates with the managed
// identity, whose roles are assigned here, scoped to this account only.

param name string
param location string
param tags object

@description('Object ID of the managed identity the app runs as.')
param principalId string

@description('Name of the blob container the Flex Consumption app runs its package from.')
param deploymentContainerName string

@description('When true, the account refuses public traffic except from operatorIpRules; the app reaches it through private endpoints.')
param vnetEnabled bool

@description('Public IPs or CIDR ranges (no /31, /32) still allowed when vnetEnabled, e.g. the operator running the post-deploy script.')
param operatorIpRules array

// A variable, not an inline loop: Bicep allows for-expressions only as whole declaration
// or property values, not inside the conditional below.
var ipRules = [for ip in operatorIpRules: {
  value: ip
  action: 'Allow'
}]

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
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

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

// The names are fixed by the code (internal/queue) and functions/provision/function.json.
resource provisionQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: 'provision-requests'
}

resource poisonQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: 'provision-requests-poison'
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

// The names are fixed by the code (internal/store).
resource operationsTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = {
  parent: tableService
  name: 'operations'
}

resource devicesTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = {
  parent: tableService
  name: 'devices'
}

// Built-in role definitions (https://learn.microsoft.com/azure/role-based-access-control/built-in-roles).
// Blob Data Owner, not Contributor: the Functions host manages blob leases and the
// deployment container with it (what the Functions docs require for AzureWebJobsStorage).
var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
}

resource roleAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for role in items(roles): {
  name: guid(storage.id, principalId, role.value)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.value)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}]

output id string = storage.id
output name string = storage.name
output blobEndpoint string = storage.properties.primaryEndpoints.blob
output queueEndpoint string = storage.properties.primaryEndpoints.queue
output tableEndpoint string = storage.properties.primaryEndpoints.table
output deploymentContainerUrl string = '${storage.properties.primaryEndpoints.blob}${deploymentContainer.name}'
