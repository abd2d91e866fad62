// What every command shares: the API client from the global options, exit codes, option parsers.
import { Command, InvalidArgumentError } from "commander";
import { ApiClient } from "../shared/contract/client";

/**
 * Exit codes scripts can rely on: 0 done; 1 the service refused the request or the operation failed (a failover that
 * ended Failed); 2 the command line is wrong; 3 the service cannot be reached or its storage is unavailable (try
 * again); 4 what was named does not exist (404).
 */
export const EXIT = { ok: 0, failed: 1, usage: 2, unavailable: 3, notFound: 4 } as const;

const SIZE_UNITS: Record<string, number> = {
  "": 1,
  b: 1,
  k: 1024,
  kib: 1024,
  m: 1024 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gib: 1024 ** 3,
  t: 1024 ** 4,
  tib: 1024 ** 4,
};

/** `os=1GiB` → { id: "os", sizeBytes: 1073741824 }. */
export function parseDiskOption(value: string, previous: { id: string; sizeBytes: number }[] = []) {
  const m = /^([^=]+)=(\d+)\s*([a-zA-Z]*)$/.exec(value.trim());
  const unit = m ? SIZE_UNITS[m[3]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) throw new InvalidArgumentError(`expected <diskId>=<size>, e.g. os=1GiB or data0=4096MiB`);
  return [...previous, { id: m[1]!, sizeBytes: Number(m[2]) * unit }];
}

/** An option parser for a whole number from 1 to `max`. */
export function positiveInt(flag: string, max: number) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < 1 || n > max) throw new InvalidArgumentError(`${flag} takes a whole number from 1 to ${max}`);
    return n;
  };
}

interface GlobalOptions {
  url: string;
  key?: string;
}

export function client(cmd: Command): ApiClient {
  const o = cmd.optsWithGlobals<GlobalOptions>();
  return new ApiClient(o.url, o.key);
}
