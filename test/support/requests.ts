// Request bodies the tests send: a small VM with two disks, in the contract's shape.
const MiB = 1024 * 1024;

export function enableBody(name = "web-1", extra: Record<string, unknown> = {}) {
  return {
    vm: {
      name,
      region: "eastus",
      resourceGroup: "prod-rg",
      size: "Standard_D2s_v5",
      network: { vnet: "prod-vnet", subnet: "web", privateIp: "10.0.1.4" },
      availabilitySet: "web-as",
      disks: [
        { id: "os", sizeBytes: 16 * MiB },
        { id: "data0", sizeBytes: 8 * MiB },
      ],
    },
    targetRegion: "westus",
    policy: { recoveryPointRetentionHours: 24, crashConsistentFrequencySeconds: 300, appConsistentFrequencyMinutes: 240 },
    ...extra,
  };
}
