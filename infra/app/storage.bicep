// Two accounts, both keyless for the app: the control account in the target region (tables, the replication queue,
// durable state, replica and failover disks, the deployment package) and the cache account in the source region.
param controlName string
param cacheName string
param location string
param sourceLocation string
param tags object = {}
param deploymentContainerName string
param replicaSharedKeyAccess bool = false

// The names the app uses (shared/storage/clients.ts): queue and poison queue of the queue trigger, disk containers.
var replicationQueue = 'replication-batches'
var containers = [deploymentContainerName, 'replicas', 'failover']

resource control 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: controlName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: { name: 'Standard_LRS' }
  properties: {
    allowBlobPublicAccess: false
    allowSharedKeyAccess: replicaSharedKeyAccess
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    dnsEndpointType: 'Standard'
    networkAcls: { defaultAction: 'Allow', bypass: 'AzureServices' }
  }

  resource blobs 'blobServices' = {
    name: 'default'
    resource containerSet 'containers' = [for c in containers: { name: c }]
  }

  resource queues 'queueServices' = {
    name: 'default'
    resource replication 'queues' = { name: replicationQueue }
    resource poison 'queues' = { name: '${replicationQueue}-poison' }
  }

  resource tables 'tableServices' = {
    name: 'default'
  }
}

// Agents reach it from their VMs with user delegation SAS only (create + write on their item's container).
resource cache 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: cacheName
  location: sourceLocation
  tags: tags
  kind: 'StorageV2'
  sku: { name: 'Standard_LRS' }
  properties: {
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    dnsEndpointType: 'Standard'
    networkAcls: { defaultAction: 'Allow', bypass: 'AzureServices' }
  }
}

output controlName string = control.name
output controlId string = control.id
output controlBlobUri string = control.properties.primaryEndpoints.blob
output controlQueueUri string = control.properties.primaryEndpoints.queue
output controlTableUri string = control.properties.primaryEndpoints.table
output cacheName string = cache.name
output cacheBlobUri string = cache.properties.primaryEndpoints.blob
