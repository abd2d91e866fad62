// Refuses a state directory that lives on a disk the agent exports: its spool would be written through the agent itself (a deadlock, and a state that a failover copies away).
import { existsSync, readdirSync, readFileSync, realpathSync, statSync } from "node:fs";
import { join, sep } from "node:path";

/** The kernel's NBD block devices (nbd.ko): whatever serves them, a state directory there is behind a user-space server. */
export const NBD_MAJOR = 43;

const majorMinor = (dev: bigint): string => {
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn);
  const minor = (dev & 0xffn) | ((dev >> 12n) & ~0xffn);
  return `${major}:${minor}`;
};

const real = (p: string): string => {
  try {
    return realpathSync(p);
  } catch {
    return p;
  }
};

/**
 * Throws, naming the disk and the reason, if `stateDir` (which exists) is an exported path or inside one, or sits on a
 * filesystem whose block device is, or is built on (partition, loop device, device-mapper/md slave), an exported block
 * device, an exported image file, or an NBD device.
 */
export function refuseStateDirOnExports(stateDir: string, disks: { diskId: string; path: string }[]): void {
  const dir = real(stateDir);
  const devices = new Map<string, string>();
  const images = new Map<string, string>();
  for (const d of disks) {
    const p = real(d.path);
    if (dir === p || dir.startsWith(p.endsWith(sep) ? p : p + sep)) throw refusal(stateDir, d.diskId, `it is ${d.path} itself or inside it`);
    let st;
    try {
      st = statSync(p, { bigint: true });
    } catch {
      images.set(p, d.diskId); // created later, as an image file
      continue;
    }
    if (st.isBlockDevice()) devices.set(majorMinor(st.rdev), d.diskId);
    else images.set(p, d.diskId);
  }

  const fsDev = majorMinor(statSync(dir, { bigint: true }).dev);
  const seen = new Set<string>();
  const visit = (devId: string, via: string): void => {
    if (seen.has(devId)) return;
    seen.add(devId);
    const what = via ? `its filesystem's device ${via} is built on ${devId}` : `its filesystem is on device ${devId}`;
    if (Number(devId.split(":")[0]) === NBD_MAJOR)
      throw new Error(
        `state directory ${stateDir} is on an NBD device (${what}, major ${NBD_MAJOR}): the agent's spool must not go through an NBD server — keep the state directory on a local disk`,
      );
    const diskId = devices.get(devId);
    if (diskId) throw refusal(stateDir, diskId, `${what}, the exported block device`);
    const sys = `/sys/dev/block/${devId}`;
    if (!existsSync(sys)) return;
    const sysDir = real(sys);
    const chain = via ? `${via} → ${devId}` : devId;
    // A partition: the whole disk it is part of.
    if (existsSync(join(sysDir, "partition"))) {
      const parent = readDevId(join(sysDir, ".."));
      if (parent) visit(parent, chain);
    }
    // A loop device: the image file behind it.
    const backing = readText(join(sysDir, "loop", "backing_file"))?.replace(/ \(deleted\)$/, "");
    if (backing) {
      const image = images.get(real(backing));
      if (image) throw refusal(stateDir, image, `its filesystem is on loop device ${chain} backed by ${backing}, the exported image`);
    }
    // Device-mapper (LVM, crypt) and md: the devices it is made of.
    let slaves: string[] = [];
    try {
      slaves = readdirSync(join(sysDir, "slaves"));
    } catch {
      // none
    }
    for (const s of slaves) {
      const id = readDevId(join(sysDir, "slaves", s));
      if (id) visit(id, chain);
    }
  };
  visit(fsDev, "");
}

function refusal(stateDir: string, diskId: string, why: string): Error {
  return new Error(
    `state directory ${stateDir} is on disk ${diskId}, which this agent exports over NBD (${why}): its spool would be written through the agent itself — use a --state-dir on another disk`,
  );
}

function readText(path: string): string | undefined {
  try {
    return readFileSync(path, "utf8").trim();
  } catch {
    return undefined;
  }
}

function readDevId(sysBlockDir: string): string | undefined {
  const v = readText(join(sysBlockDir, "dev"));
  return v && /^\d+:\d+$/.test(v) ? v : undefined;
}
