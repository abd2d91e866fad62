// The fabric's rights on the target subscription. A custom role rather than Contributor: failover creates resource
// groups (which Virtual Machine Contributor and Network Contributor cannot), networks, static-IP NICs, availability
// sets, managed disks imported from the failover VHDs and VMs, powers VMs on and off, and deletes what it made — and
// nothing else (no role assignments, no storage keys, no other resource types).
targetScope = 'subscription'

param identityPrincipalId string
param roleName string

var actions = [
  'Microsoft.Resources/subscriptions/resourceGroups/read'
  'Microsoft.Resources/subscriptions/resourceGroups/write'
  'Microsoft.Resources/subscriptions/resourceGroups/delete'
  'Microsoft.Network/virtualNetworks/read'
  'Microsoft.Network/virtualNetworks/write'
  'Microsoft.Network/virtualNetworks/delete'
  'Microsoft.Network/virtualNetworks/subnets/read'
  'Microsoft.Network/virtualNetworks/subnets/join/action'
  'Microsoft.Network/virtualNetworks/CheckIpAddressAvailability/read'
  'Microsoft.Network/networkInterfaces/read'
  'Microsoft.Network/networkInterfaces/write'
  'Microsoft.Network/networkInterfaces/delete'
  'Microsoft.Network/networkInterfaces/join/action'
  'Microsoft.Compute/availabilitySets/read'
  'Microsoft.Compute/availabilitySets/write'
  'Microsoft.Compute/availabilitySets/delete'
  'Microsoft.Compute/disks/read'
  'Microsoft.Compute/disks/write'
  'Microsoft.Compute/disks/delete'
  'Microsoft.Compute/virtualMachines/read'
  'Microsoft.Compute/virtualMachines/write'
  'Microsoft.Compute/virtualMachines/delete'
  'Microsoft.Compute/virtualMachines/start/action'
  'Microsoft.Compute/virtualMachines/deallocate/action'
  'Microsoft.Compute/virtualMachines/powerOff/action'
  'Microsoft.Compute/virtualMachines/instanceView/read'
  // Disk import names the replica account (creationData.storageAccountId).
  'Microsoft.Storage/storageAccounts/read'
]

resource fabricRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(subscription().id, roleName)
  properties: {
    roleName: roleName
    description: 'site-recovery: create, power and delete failover resources in the target subscription.'
    type: 'CustomRole'
    permissions: [{ actions: actions, notActions: [] }]
    assignableScopes: [subscription().id]
  }
}

resource fabricAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(subscription().id, identityPrincipalId, fabricRole.id)
  properties: {
    roleDefinitionId: fabricRole.id
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

output roleDefinitionId string = fabricRole.id
