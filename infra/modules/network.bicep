// Private networking (vnetEnabled): a virtual network with one subnet delegated to the
// Flex Consumption app (VNet integration: its outbound traffic to Storage and Key Vault
// stays in the VNet) and one for private endpoints of the storage services and the vault,
// with the private DNS zones that make their ordinary host names resolve to the private
// addresses inside the VNet. The same VNet is where an Azure VPN Gateway or ExpressRoute
// gateway lands a private cellular link (SORACOM Door / Direct): see docs/deploy.md.

param name string
param location string
param tags object

@description('Address space of the VNet.')
param addressPrefix string

@description('Subnet delegated to the Function App (Flex Consumption VNet integration).')
param appSubnetPrefix string

@description('Subnet for the private endpoints.')
param privateEndpointSubnetPrefix string

param storageAccountId string
param storageAccountName string
param keyVaultId string
param keyVaultName string

resource vnet 'Microsoft.Network/virtualNetworks@2023-11-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        addressPrefix
      ]
    }
    subnets: [
      {
        name: 'app'
        properties: {
          addressPrefix: appSubnetPrefix
          delegations: [
            {
              name: 'flex-consumption'
              properties: {
                // Flex Consumption apps integrate through this delegation (not Microsoft.Web/serverFarms).
                serviceName: 'Microsoft.App/environments'
              }
            }
          ]
        }
      }
      {
        name: 'private-endpoints'
        properties: {
          addressPrefix: privateEndpointSubnetPrefix
          privateEndpointNetworkPolicies: 'Disabled'
        }
      }
    ]
  }
}

// One private endpoint per storage service the app and the host use, and one for the vault.
var endpoints = [
  {
    name: '${storageAccountName}-blob'
    target: storageAccountId
    groupId: 'blob'
    zone: 'privatelink.blob.${environment().suffixes.storage}'
  }
  {
    name: '${storageAccountName}-queue'
    target: storageAccountId
    groupId: 'queue'
    zone: 'privatelink.queue.${environment().suffixes.storage}'
  }
  {
    name: '${storageAccountName}-table'
    target: storageAccountId
    groupId: 'table'
    zone: 'privatelink.table.${environment().suffixes.storage}'
  }
  {
    name: '${keyVaultName}-vault'
    target: keyVaultId
    groupId: 'vault'
    zone: 'privatelink.vaultcore.azure.net'
  }
]

resource zones 'Microsoft.Network/privateDnsZones@2020-06-01' = [for e in endpoints: {
  name: e.zone
  location: 'global'
  tags: tags
}]

resource zoneLinks 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = [for (e, i) in endpoints: {
  parent: zones[i]
  name: '${name}-link'
  location: 'global'
  tags: tags
  properties: {
    virtualNetwork: {
      id: vnet.id
    }
    registrationEnabled: false
  }
}]

resource privateEndpoints 'Microsoft.Network/privateEndpoints@2023-11-01' = [for e in endpoints: {
  name: 'pe-${e.name}'
  location: location
  tags: tags
  properties: {
    subnet: {
      id: '${vnet.id}/subnets/private-endpoints'
    }
    privateLinkServiceConnections: [
      {
        name: 'pe-${e.name}'
        properties: {
          privateLinkServiceId: e.target
          groupIds: [
            e.groupId
          ]
        }
      }
    ]
  }
}]

resource zoneGroups 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2023-11-01' = [for (e, i) in endpoints: {
  parent: privateEndpoints[i]
  name: 'default'
  properties: {
    privateDnsZoneConfigs: [
      {
        name: replace(e.zone, '.', '-')
        properties: {
          privateDnsZoneId: zones[i].id
        }
      }
    ]
  }
}]

output vnetId string = vnet.id
output appSubnetId string = '${vnet.id}/subnets/app'
