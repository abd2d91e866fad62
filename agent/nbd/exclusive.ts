// Exclusive hold of every exported image or device while the agent serves it: O_EXCL on a block device, a pid lock file beside an image file.
import { closeSync, constants, openSync, realpathSync, statSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { lockPidFile } from "../files";

/** The lock file of an image: beside it, named after it (the image's real path: a symlink locks its target). */
export function imageLockPath(image: string): string {
  let real: string;
  try {
    real = realpathSync(image);
  } catch {
    // Not created yet (the agent creates it at the disk's size): its directory's real path.
    real = join(realpathSync(dirname(image)), basename(image));
  }
  return join(dirname(real), `.${basename(real)}.site-recovery.lock`);
}

/**
 * Holds every path exclusively; all or none (what was taken is released on a refusal). Returns the release.
 *
 * - A block device is opened with O_EXCL: the kernel then refuses a mount of it, and another exclusive open (another
 *   agent, mkfs, a second `nbd-client` server…) with EBUSY — a real, kernel-enforced claim, released when the agent
 *   exits however it exits.
 * - An image file has no such thing from Node (qemu uses OFD `fcntl` byte-range locks, which Node cannot take): a lock
 *   file `.<image>.site-recovery.lock` beside it holds the agent's pid. Another agent respects it (and takes over one
 *   whose process is gone); other programs do not see it.
 */
export function holdExclusively(paths: { diskId: string; path: string }[]): () => void {
  const releases: (() => void)[] = [];
  const releaseAll = () => {
    for (const r of releases.splice(0).reverse()) r();
  };
  try {
    for (const { diskId, path } of paths) releases.push(holdOne(diskId, path));
  } catch (e) {
    releaseAll();
    throw e;
  }
  return releaseAll;
}

function holdOne(diskId: string, path: string): () => void {
  let device = false;
  try {
    device = statSync(path).isBlockDevice();
  } catch {
    // A missing image is created later; its lock is taken first.
  }
  if (device) {
    let fd: number;
    try {
      fd = openSync(path, constants.O_RDONLY | constants.O_EXCL);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "EBUSY") {
        throw new Error(
          `disk ${diskId}: ${path} is in use — mounted, or held exclusively by another program or agent; unmount it (or stop the other agent) before serving it over NBD`,
        );
      }
      throw e;
    }
    return () => closeSync(fd);
  }
  const lock = imageLockPath(path);
  return lockPidFile(lock, (pid) =>
    pid === process.pid
      ? `disk ${diskId}: ${path} is already served by an agent in this process (lock ${lock})`
      : `disk ${diskId}: ${path} is already served by another agent (pid ${pid}, lock ${lock}); stop it first`,
  );
}
