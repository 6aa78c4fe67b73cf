// The one user-assigned managed identity the Function App uses for everything: the
// Functions host and the handler reach Storage, Key Vault and Application Insights with
// it. User-assigned (not system-assigned) so role assignments can be made before the app
// exists, and the deployment-container authentication can name it.

param name string
param location string
param tags object

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
