// Unit tests for shared/replication/vhd.ts: footer layout, checksum, CHS geometry and size validation.
import { test } from "node:test";
import assert from "node:assert/strict";
import { VHD_FOOTER_BYTES, chsGeometry, isValidFixedVhdFooter, parseVhdFooter, vhdFooter } from "../../shared/replication/vhd";

const MIB = 1024 * 1024;
const GIB = 1024 * MIB;
const TIB = 1024 * GIB;

test("footer is 512 bytes with the fixed-VHD fields at their offsets (big-endian)", () => {
  const uniqueId = Buffer.from("00112233445566778899aabbccddeeff", "hex");
  const timestamp = new Date("2024-01-01T00:00:00Z");
  const f = vhdFooter(16 * MIB, { uniqueId, timestamp });
  assert.equal(VHD_FOOTER_BYTES, 512);
  assert.equal(f.length, 512);
  assert.equal(f.toString("ascii", 0, 8), "conectix");
  assert.equal(f.readUInt32BE(8), 2, "features");
  assert.equal(f.readUInt32BE(12), 0x00010000, "format version");
  assert.equal(f.readBigUInt64BE(16), 0xffffffffffffffffn, "data offset");
  assert.equal(f.readUInt32BE(24), 757382400, "seconds from 2000-01-01 to 2024-01-01");
  assert.equal(f.toString("ascii", 28, 32), "win ", "creator application");
  assert.equal(f.toString("ascii", 36, 40), "Wi2k", "creator host OS");
  assert.equal(f.readBigUInt64BE(40), BigInt(16 * MIB), "original size");
  assert.equal(f.readBigUInt64BE(48), BigInt(16 * MIB), "current size");
  assert.equal(f.readUInt16BE(56), 481, "cylinders");
  assert.equal(f[58], 4, "heads");
  assert.equal(f[59], 17, "sectors per track");
  assert.equal(f.readUInt32BE(60), 2, "disk type fixed");
  assert.deepEqual(f.subarray(68, 84), uniqueId);
  assert.equal(f[84], 0, "saved state");
  assert.ok(
    f.subarray(85).every((b) => b === 0),
    "reserved bytes are zero",
  );
});

test("footer round-trips through parseVhdFooter", () => {
  const uniqueId = Buffer.alloc(16, 0xab);
  const timestamp = new Date("2031-07-15T12:34:56Z");
  for (const size of [MIB, 16 * MIB, 1000 * MIB, GIB, 127 * GIB, 2 * TIB]) {
    const f = vhdFooter(size, { uniqueId, timestamp });
    const p = parseVhdFooter(f);
    assert.equal(p.cookie, "conectix");
    assert.equal(p.diskType, 2);
    assert.equal(p.currentSize, size);
    assert.equal(p.originalSize, size);
    assert.equal(p.checksumValid, true);
    assert.deepEqual(p.geometry, chsGeometry(size));
    assert.deepEqual(p.uniqueId, uniqueId);
    assert.equal(p.timestamp.toISOString(), timestamp.toISOString());
    assert.equal(p.creatorApplication, "win ");
    assert.equal(isValidFixedVhdFooter(f), true);
    assert.equal(isValidFixedVhdFooter(f, size), true);
    assert.equal(isValidFixedVhdFooter(f, size + MIB), false, "size mismatch");
  }
});

test("timestamp is truncated to whole seconds; defaults: random unique id, current time", () => {
  const p = parseVhdFooter(vhdFooter(MIB, { timestamp: new Date("2020-02-02T02:02:02.999Z") }));
  assert.equal(p.timestamp.toISOString(), "2020-02-02T02:02:02.000Z");
  const before = Math.floor(Date.now() / 1000) * 1000;
  const a = parseVhdFooter(vhdFooter(MIB));
  const b = parseVhdFooter(vhdFooter(MIB));
  assert.notDeepEqual(a.uniqueId, b.uniqueId);
  assert.equal(a.uniqueId.length, 16);
  assert.ok(a.timestamp.getTime() >= before && a.timestamp.getTime() <= Date.now());
});

test("checksum is the one's complement of the byte sum and breaks when any byte flips", () => {
  const f = vhdFooter(GIB, { uniqueId: Buffer.alloc(16, 7), timestamp: new Date("2024-01-01T00:00:00Z") });
  let sum = 0;
  for (let i = 0; i < 512; i++) if (i < 64 || i >= 68) sum += f[i]!;
  assert.equal(f.readUInt32BE(64), ~sum >>> 0);
  for (const offset of [0, 24, 48, 55, 59, 67, 70, 100, 511]) {
    const broken = Buffer.from(f);
    broken[offset] = broken[offset]! ^ 0x01;
    assert.equal(parseVhdFooter(broken).checksumValid, false, `flip at ${offset}`);
    assert.equal(isValidFixedVhdFooter(broken), false, `flip at ${offset}`);
  }
});

test("isValidFixedVhdFooter rejects wrong length, cookie, disk type, data offset and non-MiB sizes", () => {
  const f = vhdFooter(16 * MIB);
  assert.equal(isValidFixedVhdFooter(f.subarray(0, 511)), false);
  assert.equal(isValidFixedVhdFooter(Buffer.concat([f, Buffer.alloc(1)])), false);
  assert.equal(isValidFixedVhdFooter(Buffer.alloc(512)), false);
  // Re-seal with a correct checksum so only the named field is wrong.
  const reseal = (mutate: (b: Buffer) => void): Buffer => {
    const b = Buffer.from(f);
    mutate(b);
    b.writeUInt32BE(0, 64);
    let sum = 0;
    for (const byte of b) sum += byte;
    b.writeUInt32BE(~sum >>> 0, 64);
    assert.equal(parseVhdFooter(b).checksumValid, true);
    return b;
  };
  assert.equal(isValidFixedVhdFooter(reseal(() => {})), true);
  assert.equal(isValidFixedVhdFooter(reseal((b) => b.write("conectiy", 0, "ascii"))), false);
  assert.equal(isValidFixedVhdFooter(reseal((b) => b.writeUInt32BE(3, 60))), false, "dynamic disk");
  assert.equal(isValidFixedVhdFooter(reseal((b) => b.writeBigUInt64BE(512n, 16))), false, "data offset");
  assert.equal(isValidFixedVhdFooter(reseal((b) => b.writeBigUInt64BE(BigInt(16 * MIB + 512), 48))), false);
  assert.equal(isValidFixedVhdFooter(reseal((b) => b.writeBigUInt64BE(0n, 48))), false);
  assert.throws(() => parseVhdFooter(Buffer.alloc(511)), RangeError);
});

test("CHS geometry matches the VHD specification's algorithm for known sizes", () => {
  assert.deepEqual(chsGeometry(MIB), { cylinders: 30, heads: 4, sectorsPerTrack: 17 });
  assert.deepEqual(chsGeometry(16 * MIB), { cylinders: 481, heads: 4, sectorsPerTrack: 17 });
  assert.deepEqual(chsGeometry(1000 * MIB), { cylinders: 2031, heads: 16, sectorsPerTrack: 63 });
  assert.deepEqual(chsGeometry(GIB), { cylinders: 2080, heads: 16, sectorsPerTrack: 63 });
  assert.deepEqual(chsGeometry(127 * GIB), { cylinders: 65278, heads: 16, sectorsPerTrack: 255 });
  // Beyond 65535*16*255 sectors (~127.5 GiB) the geometry is capped.
  const capped = { cylinders: 65535, heads: 16, sectorsPerTrack: 255 };
  assert.deepEqual(chsGeometry(2 * TIB), capped);
  assert.deepEqual(chsGeometry(8 * TIB - MIB), capped);
  assert.deepEqual(chsGeometry(65535 * 16 * 255 * 512), capped);
  // Geometry rounds down: C*H*S sectors never exceed the disk (the reason qemu must trust the footer's size).
  for (const size of [16 * MIB, 1000 * MIB, GIB, 127 * GIB]) {
    const g = chsGeometry(size);
    assert.ok(g.cylinders * g.heads * g.sectorsPerTrack * 512 <= size);
  }
});

test("sizes that are not a positive whole number of MiB are rejected", () => {
  for (const bad of [0, -MIB, 512, MIB + 512, MIB - 1, 1.5 * MIB, 16 * MIB + 0.5, NaN, Infinity]) {
    assert.throws(() => vhdFooter(bad), RangeError, String(bad));
  }
  assert.throws(() => vhdFooter(8 * TIB), RangeError, "8 TiB plus the footer exceeds an 8 TiB page blob");
  assert.throws(() => vhdFooter(MIB, { uniqueId: Buffer.alloc(15) }), RangeError);
  assert.throws(() => vhdFooter(MIB, { timestamp: new Date("1999-12-31T23:59:59Z") }), RangeError);
  assert.throws(() => vhdFooter(MIB, { timestamp: new Date(NaN) }), RangeError);
});

test("8 TiB - 1 MiB works and its size survives the 64-bit fields exactly", () => {
  const size = 8 * TIB - MIB;
  const f = vhdFooter(size);
  assert.equal(f.readBigUInt64BE(48), 8796091973632n);
  assert.equal(f.readBigUInt64BE(40), 8796091973632n);
  const p = parseVhdFooter(f);
  assert.equal(p.currentSize, size);
  assert.equal(p.originalSize, size);
  assert.equal(p.checksumValid, true);
  assert.equal(isValidFixedVhdFooter(f, size), true);
});
