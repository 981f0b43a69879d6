/**
 * Issue 20, test strength: a drain lasts "through SIGHUP reloads and endpoint-set changes that keep
 * the member" (docs/admin.md, "Draining a member"), against the binary: a member drained with
 * `etcd-gateway member drain` (on the gateway's unix socket admin address, the one that takes
 * drains) gets no new connection after a SIGHUP whose `--endpoints-file` adds a member, in every
 * --workers process, until `member ready`. Reads go through the TCP admin address.
 */
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import type { Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runBinary, startGatewayProcess, stopAllGateways, type GatewayProcess } from "../support/gateway.ts";
import { freePort, waitFor } from "../support/net.ts";
import { closeServer, echoOnPort, roundTrip } from "../support/peers.ts";

const dir = mkdtempSync(join(tmpdir(), "etcd-gateway-strength-drain-"));
const servers: Server[] = [];
afterEach(async () => {
  await stopAllGateways();
  await Promise.all(servers.splice(0).map(closeServer));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

type Name = "A" | "B" | "C";

/** Three echo members, counting the connections each gets. */
async function threeMembers(): Promise<{ addr: Record<Name, string>; count: Record<Name, number> }> {
  const count = { A: 0, B: 0, C: 0 };
  const addr = {} as Record<Name, string>;
  for (const n of ["A", "B", "C"] as const) {
    const port = freePort();
    servers.push(await echoOnPort(port, () => count[n]++));
    addr[n] = `127.0.0.1:${port}`;
  }
  return { addr, count };
}

interface Row {
  endpoint: string;
  state: string;
  drained: boolean;
}
const rows = async (gw: GatewayProcess) => ((await (await fetch(`${gw.adminURL}/status`, { headers: { connection: "close" } })).json()) as { members: Row[] }).members;

/** `n` round trips through the gateway, each on a new connection; returns how many connections each member got meanwhile. */
async function spread(gw: GatewayProcess, count: Record<Name, number>, n: number): Promise<Record<Name, number>> {
  const before = { ...count };
  for (let i = 0; i < n; i++) expect(await roundTrip(gw.port, `r${i}`)).toBe(`r${i}`);
  return { A: count.A - before.A, B: count.B - before.B, C: count.C - before.C };
}

describe("a drain through a SIGHUP that adds a member (--endpoints-file)", () => {
  // ordered: A stands first, so any connection A gets is the drain lost. round-robin over two
  // processes: each process would send a third of its connections to A without the drain.
  for (const [policy, workers] of [["ordered", 1], ["round-robin", 2]] as const) {
    test(`${policy}${workers > 1 ? `, --workers ${workers}` : ""}: the drained member gets no new connection after the reload, /status still shows it drained, and ready brings it back`, async () => {
      const { addr, count } = await threeMembers();
      const eps = join(dir, `endpoints-${policy}.txt`);
      writeFileSync(eps, `${addr.A}\n${addr.B}\n`);
      const sock = join(dir, `admin-${policy}.sock`);
      const member = (...args: string[]) => runBinary(["member", ...args, `--admin-addr=unix://${sock}`]);
      const gw = await startGatewayProcess([`--endpoints-file=${eps}`, `--policy=${policy}`, "--health-check=none", `--workers=${workers}`, `--admin-addr=unix://${sock}`], { admin: true });

      const drained = member("drain", addr.A);
      expect([drained.code, drained.stderr]).toEqual([0, ""]);
      // Every process follows (the primary broadcasts to the workers): a run of connections that all miss A.
      await gw.waitForLog("member drained: no new connections");
      await waitFor("20 connections in a row that miss A", async () => (await spread(gw, count, 20)).A === 0, 5000, 0);

      writeFileSync(eps, `${addr.A}\n${addr.B}\n${addr.C}\n`);
      gw.proc.kill("SIGHUP");
      expect(await gw.waitForLog("endpoints changed")).toMatchObject({ added: [addr.C], removed: [] });
      expect((await rows(gw)).map((r) => [r.endpoint, r.state, r.drained])).toEqual([
        [addr.A, "up", true],
        [addr.B, "up", false],
        [addr.C, "up", false],
      ]);
      if (policy === "round-robin") {
        // The new set is in force where these are served: C gets connections (a process that has not
        // adopted it yet still has A drained, so waiting here cannot hide a lost drain).
        await waitFor("C in rotation", async () => (await spread(gw, count, 3)).C > 0, 5000, 0);
      }
      const after = await spread(gw, count, 60);
      expect(after.A, JSON.stringify(after)).toBe(0);
      expect(after.B + after.C).toBe(60);
      if (policy === "round-robin") expect(Math.min(after.B, after.C)).toBeGreaterThan(0);
      expect(gw.lines.filter((l) => l.includes("member back in rotation"))).toEqual([]);

      // Not vacuous: once ready, A is chosen again in the new set.
      expect(member("ready", addr.A).code).toBe(0);
      await gw.waitForLog("member back in rotation");
      await waitFor("A in rotation again", async () => (await spread(gw, count, 3)).A > 0, 5000, 0);
    });
  }
});
