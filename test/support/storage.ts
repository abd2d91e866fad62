// Storage for integration tests: a private in-memory Azurite on free ports, stopped by the test that started it.
import { startAzurite, type LocalStorage } from "../../local/azurite";

export type { LocalStorage } from "../../local/azurite";

/** In-memory (nothing to clean up on disk), free ports (tests run in parallel), silent (no access log in test output). */
export function startTestStorage(): Promise<LocalStorage> {
  return startAzurite({ inMemory: true, silent: true });
}
