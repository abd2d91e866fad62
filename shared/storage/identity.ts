// Microsoft Entra credentials for identity-based connections and ARM: one credential object per identity, reused.
import { DefaultAzureCredential, ManagedIdentityCredential } from "@azure/identity";
import type { TokenCredential } from "@azure/identity";

export interface IdentitySpec {
  /** `managedidentity`: the Function App's managed identity only (as `<NAME>__credential` says); `default`: the DefaultAzureCredential chain. */
  credential: "managedidentity" | "default";
  /** A user-assigned identity's client id. */
  clientId?: string;
}

const credentials = new Map<string, TokenCredential>();

/** The credential for an identity; tokens are cached per credential, so every client of one identity shares it. */
export function azureCredential(spec: IdentitySpec): TokenCredential {
  const key = `${spec.credential}|${spec.clientId ?? ""}`;
  let c = credentials.get(key);
  if (!c) {
    if (spec.credential === "managedidentity") c = spec.clientId ? new ManagedIdentityCredential({ clientId: spec.clientId }) : new ManagedIdentityCredential();
    else c = new DefaultAzureCredential(spec.clientId ? { managedIdentityClientId: spec.clientId } : {});
    credentials.set(key, c);
  }
  return c;
}
