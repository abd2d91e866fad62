// site-recovery on Azure: a Flex Consumption Function App in the TARGET region (the control plane survives the loss of
// the source region), its storage (control plane + replica disks), the cache account in the SOURCE region, one
// user-assigned identity for every connection (no keys in app settings), Application Insights, and the fabric's rights.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name; a short hash of it names the resources.')
param environmentName string

@minLength(1)
@description('Target region: the Function App, its storage, the replicas, and where VMs fail over to.')
@metadata({ azd: { type: 'location' } })
param location string

@minLength(1)
@description('Source region: where the protected VMs run; the agents\' cache account goes here.')
param sourceLocation string

@description('Subscription of the protected VMs (their networks are read, planned failover deallocates them); empty = this one.')
param sourceSubscriptionId string = ''

@description('Resource group of the deployment; empty = rg-<environmentName>.')
param resourceGroupName string = ''

@description('Names; empty = generated.')
param functionAppName string = ''
param storageAccountName string = ''
param cacheStorageAccountName string = ''
param identityName string = ''

@description('Object id of the deploying user, given the same data roles for debugging; empty = none.')
param principalId string = ''

@description('Durable Functions task hub (host.json reads %DURABLE_TASK_HUB%).')
param taskHub string = 'siterecovery'

@description('Shared key access on the replica account. Off by default; turn on only if managed-disk import from the failover VHDs is refused without it (unverified here).')
param replicaSharedKeyAccess bool = false

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }
var appName = !empty(functionAppName) ? functionAppName : 'func-sr-${resourceToken}'
var deploymentContainerName = 'app-package-${take(appName, 32)}-${take(resourceToken, 7)}'

resource rg 'Microsoft.Resources/resourceGroups@2021-04-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : 'rg-${environmentName}'
  location: location
  tags: tags
}

module identity 'app/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: !empty(identityName) ? identityName : 'id-sr-${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'app/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    controlName: !empty(storageAccountName) ? storageAccountName : 'stsr${resourceToken}'
    cacheName: !empty(cacheStorageAccountName) ? cacheStorageAccountName : 'stsrc${take(resourceToken, 19)}'
    location: location
    sourceLocation: sourceLocation
    tags: tags
    deploymentContainerName: deploymentContainerName
    replicaSharedKeyAccess: replicaSharedKeyAccess
  }
}

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: 'log-sr-${resourceToken}'
    applicationInsightsName: 'appi-sr-${resourceToken}'
    location: location
    tags: tags
  }
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    controlStorageName: storage.outputs.controlName
    cacheStorageName: storage.outputs.cacheName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    identityPrincipalId: identity.outputs.principalId
    userPrincipalId: principalId
  }
}

module fabricRights 'app/fabric-rights.bicep' = {
  name: 'fabric-rights'
  params: {
    identityPrincipalId: identity.outputs.principalId
    roleName: 'site-recovery fabric (${environmentName})'
  }
}

module api 'app/api.bicep' = {
  name: 'api'
  scope: rg
  params: {
    name: appName
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    controlBlobUri: storage.outputs.controlBlobUri
    controlQueueUri: storage.outputs.controlQueueUri
    controlTableUri: storage.outputs.controlTableUri
    cacheBlobUri: storage.outputs.cacheBlobUri
    replicaStorageId: storage.outputs.controlId
    deploymentContainerName: deploymentContainerName
    applicationInsightsConnectionString: monitoring.outputs.connectionString
    subscriptionId: subscription().subscriptionId
    sourceSubscriptionId: !empty(sourceSubscriptionId) ? sourceSubscriptionId : subscription().subscriptionId
    taskHub: taskHub
  }
  // The app starts only once its identity may reach its storage.
  dependsOn: [rbac]
}

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_NAME string = api.outputs.name
output SERVICE_API_NAME string = api.outputs.name
output SERVICE_API_URI string = api.outputs.uri
output CACHE_STORAGE_ACCOUNT string = storage.outputs.cacheName
output CONTROL_STORAGE_ACCOUNT string = storage.outputs.controlName
output FABRIC_ROLE_DEFINITION_ID string = fabricRights.outputs.roleDefinitionId
