// The Function App on Flex Consumption (Node 20), its identity, and its app settings: every connection identity-based.
param name string
param location string
param tags object = {}
param identityId string
param identityClientId string
param controlBlobUri string
param controlQueueUri string
param controlTableUri string
param cacheBlobUri string
param replicaStorageId string
param deploymentContainerName string
param applicationInsightsConnectionString string
param subscriptionId string
param sourceSubscriptionId string
param taskHub string
param instanceMemoryMB int = 2048
param maximumInstanceCount int = 40

// Flex Consumption runs Node 20 with the v4 programming model (package.json "engines", host.json's bundle [4.*, 5.0.0)).
var runtimeName = 'node'
var runtimeVersion = '20'

var appSettings = {
  // Control plane (target region): host storage, durable state, tables, the replication queue.
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  AzureWebJobsStorage__blobServiceUri: controlBlobUri
  AzureWebJobsStorage__queueServiceUri: controlQueueUri
  AzureWebJobsStorage__tableServiceUri: controlTableUri
  // Replica and failover disks: the control account too (same region, one account to pay for at idle).
  REPLICA_STORAGE__credential: 'managedidentity'
  REPLICA_STORAGE__clientId: identityClientId
  REPLICA_STORAGE__blobServiceUri: controlBlobUri
  // The agents' cache, next to the protected VMs (source region).
  CACHE_STORAGE__credential: 'managedidentity'
  CACHE_STORAGE__clientId: identityClientId
  CACHE_STORAGE__blobServiceUri: cacheBlobUri
  DURABLE_TASK_HUB: taskHub
  // The fabric: target resources through Azure Resource Manager, signed in as the same identity.
  FABRIC: 'arm'
  AZURE_CLIENT_ID: identityClientId
  AZURE_SUBSCRIPTION_ID: subscriptionId
  AZURE_SOURCE_SUBSCRIPTION_ID: sourceSubscriptionId
  REPLICA_STORAGE_RESOURCE_ID: replicaStorageId
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  // Node flags for the worker (the same as the local host's, local/process.ts HOST_NODE_ARGS): apply's download
  // buffers otherwise start a full garbage collection every 100-200 ms.
  languageWorkers__node__arguments: '--initial-heap-size=128'
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: 'plan-${name}'
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource app 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': 'api' })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${identityId}': {} }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${controlBlobUri}${deploymentContainerName}'
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
        name: runtimeName
        version: runtimeVersion
      }
    }
    siteConfig: {
      minTlsVersion: '1.2'
    }
  }

  resource settings 'config' = {
    name: 'appsettings'
    properties: appSettings
  }
}

output name string = app.name
output uri string = 'https://${app.properties.defaultHostName}'
