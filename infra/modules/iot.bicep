// The IoT Hub devices connect to, and the Device Provisioning Service the app registers
// them with (X.509 attestation, enrollment group created by the post-deploy script),
// linked to the hub. ARM links a hub to DPS only by connection string, so the hub's
// iothubowner key goes into the DPS resource here — it never reaches an app setting or
// an output. The first of a new hub's default policies is iothubowner.

param iotHubName string
param dpsName string
param location string
param tags object

@description('IoT Hub SKU (S1 is the smallest standard tier; F1 is free but allows 500 devices).')
@allowed([
  'F1'
  'B1'
  'B2'
  'B3'
  'S1'
  'S2'
  'S3'
])
param iotHubSku string

@description('IoT Hub units.')
@minValue(1)
param iotHubCapacity int

resource hub 'Microsoft.Devices/IotHubs@2023-06-30' = {
  name: iotHubName
  location: location
  tags: tags
  sku: {
    name: iotHubSku
    capacity: iotHubCapacity
  }
  properties: {}
}

resource dps 'Microsoft.Devices/provisioningServices@2022-12-12' = {
  name: dpsName
  location: location
  tags: tags
  sku: {
    name: 'S1'
    capacity: 1
  }
  properties: {
    allocationPolicy: 'Hashed'
    iotHubs: [
      {
        connectionString: 'HostName=${hub.properties.hostName};SharedAccessKeyName=iothubowner;SharedAccessKey=${hub.listKeys().value[0].primaryKey}'
        location: location
      }
    ]
  }
}

output iotHubName string = hub.name
output iotHubHostName string = hub.properties.hostName
output dpsName string = dps.name
output dpsIdScope string = dps.properties.idScope
output dpsServiceHostName string = dps.properties.serviceOperationsHostName
