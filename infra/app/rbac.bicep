// Data-plane roles of the app's identity, each on the account its connection names (see the app settings in api.bicep).
param controlStorageName string
param cacheStorageName string
param applicationInsightsName string
param identityPrincipalId string
@description('The deploying user, for debugging with their own sign-in; empty = none.')
param userPrincipalId string = ''

var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  storageQueueDelegator: '7ee386e9-84f0-448e-80a6-f185f6533131'
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}

resource control 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: controlStorageName
}

resource cache 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: cacheStorageName
}

resource insights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// AzureWebJobsStorage__* and REPLICA_STORAGE__* (the control account): blobs (host, durable state, replicas, failover
// disks; Owner as the Functions host requires), queues (triggers, durable), tables (the app's and durable's), and the
// queue delegation key that signs the agents' add-only queue SAS (Blob Data Owner already covers the blob one).
var controlRoles = [roles.storageBlobDataOwner, roles.storageQueueDataContributor, roles.storageTableDataContributor, roles.storageQueueDelegator]

resource controlAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for role in controlRoles: {
  name: guid(control.id, identityPrincipalId, role)
  scope: control
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}]

// CACHE_STORAGE__* (the cache account): containers per item, batches read and deleted, and the blob delegation key
// that signs the agents' create+write container SAS (Blob Data Contributor includes generateUserDelegationKey).
resource cacheAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(cache.id, identityPrincipalId, roles.storageBlobDataContributor)
  scope: cache
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// APPLICATIONINSIGHTS_AUTHENTICATION_STRING (Authorization=AAD): telemetry is published as the identity.
resource insightsAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(insights.id, identityPrincipalId, roles.monitoringMetricsPublisher)
  scope: insights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource userControlAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for role in controlRoles: if (!empty(userPrincipalId)) {
  name: guid(control.id, userPrincipalId, role)
  scope: control
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
    principalId: userPrincipalId
    principalType: 'User'
  }
}]
