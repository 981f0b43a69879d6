/**
 * Matching handed sockets to addresses (src/inherit.ts) and sharing a generation's sockets among
 * its processes (src/datapath/sockets.ts), whatever the predecessor's --workers was.
 */
import { describe, expect, test } from "bun:test";
import { parseListenAddress } from "../../src/addresses.ts";
import { shareOf } from "../../src/datapath/sockets.ts";
import { matchInherited, type Inherited } from "../../src/inherit.ts";

const tcp = (fd: number, host: string, port: number, owner: Inherited["owner"] = "systemd", name = "etcd-gateway.socket"): Inherited => ({ fd, name, owner, at: { family: "tcp", host, port } });
const unix = (fd: number, path: string, owner: Inherited["owner"] = "systemd", name = ""): Inherited => ({ fd, name, owner, at: { family: "unix", path } });
const addrs = (...a: string[]) => a.map(parseListenAddress);

describe("shareOf", () => {
  test("every socket has a process and every process a socket, for any count on either side", () => {
    for (let n = 1; n <= 6; n++) {
      for (let m = 1; m <= 6; m++) {
        const shares = Array.from({ length: m }, (_, k) => shareOf(n, m, k));
        for (const s of shares) expect(s.length).toBeGreaterThan(0);
        expect(new Set(shares.flat()).size).toBe(n);
        if (n >= m) expect(shares.flat().length).toBe(n); // no socket is accepted on twice when there are enough
      }
    }
  });
  test("one socket per process when the counts match (a same-flags upgrade keeps each worker's socket)", () => {
    expect([0, 1, 2].map((k) => shareOf(3, 3, k))).toEqual([[0], [1], [2]]);
  });
});

describe("matchInherited", () => {
  test("by the bound address: TCP (localhost stands for 127.0.0.1 and ::1) and unix, listen and admin", () => {
    const m = matchInherited([tcp(3, "127.0.0.1", 23790), unix(4, "/run/gw.sock"), tcp(5, "::1", 21191)], addrs("localhost:23790", "unix:///run/gw.sock"), addrs("[::1]:21191"));
    expect(m.listen.get("localhost:23790")?.map((s) => s.fd)).toEqual([3]);
    expect(m.listen.get("unix:///run/gw.sock")?.map((s) => s.fd)).toEqual([4]);
    expect(m.admin.get("[::1]:21191")?.fd).toBe(5);
    expect(m.unused).toEqual([]);
  });

  test("several sockets of one address (a predecessor's workers) all go to it, in order", () => {
    const m = matchInherited([tcp(3, "127.0.0.1", 23790, "gateway"), tcp(4, "127.0.0.1", 23790, "gateway")], addrs("127.0.0.1:23790"), []);
    expect(m.listen.get("127.0.0.1:23790")?.map((s) => s.fd)).toEqual([3, 4]);
  });

  test("a predecessor's socket no address wants is returned unused; a systemd one is an error naming it", () => {
    expect(matchInherited([tcp(3, "127.0.0.1", 2000, "gateway")], addrs("127.0.0.1:23790"), []).unused.map((s) => s.fd)).toEqual([3]);
    expect(() => matchInherited([tcp(3, "127.0.0.1", 2000)], addrs("127.0.0.1:23790"), [])).toThrow("systemd passed a socket on 127.0.0.1:2000 (descriptor 3, FileDescriptorName=etcd-gateway.socket) that serves none of 127.0.0.1:23790");
  });

  test("FileDescriptorName=listen or admin stands for the one address of that role and kind left; two candidates is an error", () => {
    const m = matchInherited([tcp(3, "::", 23790, "systemd", "listen")], addrs("0.0.0.0:23790", "unix:///run/gw.sock"), []);
    expect(m.listen.get("0.0.0.0:23790")?.map((s) => s.fd)).toEqual([3]);
    const a = matchInherited([tcp(3, "::", 21191, "systemd", "admin")], addrs("127.0.0.1:23790"), addrs("127.0.0.1:21191"));
    expect(a.admin.get("127.0.0.1:21191")?.fd).toBe(3);
    expect(() => matchInherited([tcp(3, "::", 23790, "systemd", "listen")], addrs("127.0.0.1:23790", "127.0.0.2:23790"), [])).toThrow("2 tcp addresses of --listen-addr could take it");
  });
});
