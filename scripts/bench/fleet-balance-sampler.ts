/**
 * The readings of the fleet balance benchmark: once a second, per etcd member, the connections
 * open on its client port and the connections it accepted since the previous reading, all of them
 * and the bench clients' ones; the members' request counters over a window (surviving restarts);
 * and a member's readiness, waited for with requests the bench counts, so that its own requests
 * can be taken out of the cluster's load.
 *
 * - **All new connections** per member and second are counted as fleet-measure.ts counts them per
 *   window, only per second: every accepted socket the kernel destroys (`ss -E`, sock_diag destroy
 *   events, filtered to the members' client ports) plus the change in connected sockets on the port
 *   (`ss -t`, time-wait and half-open ones not included) between two readings. A connection opened
 *   and closed between two readings is thus counted too, once.
 * - **Client connections**: every request of the bench's clients is exactly REQUEST_BYTES long
 *   (scripts/bench/fleet-balance-client.ts), and a gateway relays the bytes as they are, so a
 *   member-side socket that received a non-zero multiple of REQUEST_BYTES (plus one for a FIN;
 *   `bytes_received` of `ss -i`, in the readings and in the destroy events) is a client's; one that
 *   received some other count is the gateway's own (a health check) or the member's own (etcd
 *   3.4's JSON gateway dials its own client port). A socket is judged once, at the first reading or
 *   destroy event that shows it with any byte received (a health-check connection kept alive grows
 *   past REQUEST_BYTES later), and counted as a new client connection then. Sockets already open at the first reading (before
 *   the clients start) are never clients.
 *
 * @module
 */
import type { Cluster } from "../../test/support/cluster.ts";
import { runToEnd } from "../../test/support/process.ts";
import { spawnChild, type Child } from "./children.ts";
import { REQUEST_BYTES } from "./fleet-balance-client.ts";
import { scrape, type MemberCounters } from "./fleet-measure.ts";

/** One reading. Counts are per member, in the order of the cluster's members. */
export interface Sample {
  /** Unix time, ms. */
  at: number;
  /** Established connections on the member's client port (the member's side of each), any kind. */
  established: number[];
  /** Of those, the bench clients' connections. */
  clients: number[];
  /** Connected sockets on the port (established, closing; not time-wait), for the count of new connections. */
  open: number[];
  /** Accepted sockets destroyed on the port since the sampler started. */
  destroyed: number[];
  /** Client connections judged so far (see the module doc): their first sighting counts them. */
  clientsSeen: number[];
  /** Whether each member's process was running. */
  running: boolean[];
}

/** A socket of `ss -t -i` or `ss -E -i`: the member (index of its port), the peer's port, its state and bytes received (null: not shown). */
interface SocketLine {
  member: number;
  peer: number;
  state: string;
  bytes: number | null;
}

/**
 * Parses `ss -t -i -n -H` output: a socket line ("State Recv-Q Send-Q Local Peer") followed by an
 * indented info line with `bytes_received:N` (absent before any byte). Feed it chunks; it calls
 * `emit` once per socket, when its info line (or the next socket line) arrives.
 */
class SsParser {
  private buf = "";
  private pending: SocketLine | null = null;

  constructor(private readonly ports: readonly number[], private readonly emit: (s: SocketLine) => void) {}

  feed(text: string, final = false): void {
    this.buf += text;
    const lines = this.buf.split("\n");
    this.buf = final ? "" : (lines.pop() ?? "");
    for (const line of lines) {
      if (line.trim() === "") continue;
      if (/^\s/.test(line)) {
        if (this.pending === null) continue;
        const b = /bytes_received:(\d+)/.exec(line)?.[1];
        this.pending.bytes = b === undefined ? 0 : Number(b);
        this.flush();
        continue;
      }
      this.flush();
      const f = line.trim().split(/\s+/);
      const local = f[3] ?? "";
      const member = this.ports.indexOf(Number(local.slice(local.lastIndexOf(":") + 1)));
      const peer = f[4] ?? "";
      // A listener's peer is "*".
      if (member >= 0 && !peer.endsWith(":*")) this.pending = { member, peer: Number(peer.slice(peer.lastIndexOf(":") + 1)), state: f[0] ?? "", bytes: null };
    }
    if (final) this.flush();
  }

  private flush(): void {
    if (this.pending !== null) this.emit(this.pending);
    this.pending = null;
  }
}

/**
 * Whether `bytes` received make a socket a bench client's, undecided (null) before any byte:
 * whole requests, plus one for a FIN received (it takes a sequence number, and `bytes_received`
 * counts it: a closed short connection shows REQUEST_BYTES + 1).
 */
function judge(bytes: number | null): boolean | null {
  if (bytes === null || bytes === 0) return null;
  return bytes >= REQUEST_BYTES && bytes % REQUEST_BYTES <= 1;
}

/** How long a destroyed or vanished socket is remembered, so that a late line about it is not taken for a new one. */
const GONE_MS = 5000;

/** The sockets on the members' ports: which are clients', which were counted, which are gone. */
class Classifier {
  /** Per member, cumulative: client connections judged. */
  readonly clientsSeen: number[];
  private readonly known = new Map<string, boolean | null>();
  private readonly gone = new Map<string, number>();

  constructor(members: number) {
    this.clientsSeen = Array.from({ length: members }, () => 0);
  }

  /** A socket seen in a reading; `baseline`: the first reading, whose sockets are never clients. Returns its verdict. */
  seen(s: SocketLine, baseline: boolean): boolean | null {
    const key = `${s.member}:${s.peer}`;
    if (this.gone.has(key)) return false;
    const before = this.known.get(key);
    if (before === true || before === false) return before;
    const v = baseline ? false : judge(s.bytes);
    this.known.set(key, v);
    if (v === true) this.clientsSeen[s.member]!++;
    return v;
  }

  /** A socket destroyed (a destroy event): judged now if it never was (opened and closed between two readings). */
  ended(s: SocketLine): void {
    const key = `${s.member}:${s.peer}`;
    if (this.gone.has(key)) return;
    const before = this.known.get(key);
    if ((before === undefined || before === null) && judge(s.bytes) === true) this.clientsSeen[s.member]!++;
    this.known.delete(key);
    this.gone.set(key, Date.now());
  }

  /**
   * Forgets the judged sockets missing from a reading (`present`: its keys), so that their destroy
   * event, if it comes later, is not taken for a new socket; undecided ones wait for theirs.
   */
  sweep(present: ReadonlySet<string>): void {
    for (const [key, v] of this.known) {
      if (present.has(key) || v === null) continue;
      this.known.delete(key);
      this.gone.set(key, Date.now());
    }
    const old = Date.now() - GONE_MS;
    for (const [key, at] of this.gone) if (at < old) this.gone.delete(key);
  }
}

/** `ss -E -i` on the members' ports, line-buffered (stdbuf): destroyed sockets counted and judged. */
class DestroyWatch {
  private readonly child: Child;
  readonly counts: number[];
  private readonly reading: Promise<void>;

  constructor(ports: readonly number[], classifier: Classifier) {
    this.counts = ports.map(() => 0);
    const filter = `( ${ports.map((p) => `sport = :${p}`).join(" or ")} )`;
    const child = spawnChild("ss-events", ["stdbuf", "-oL", "ss", "-E", "-t", "-i", "-n", "-H", filter], { stdout: "pipe" });
    this.child = child;
    const counts = this.counts;
    const parser = new SsParser(ports, (s) => {
      counts[s.member]!++;
      classifier.ended(s);
    });
    this.reading = (async () => {
      const decoder = new TextDecoder();
      for await (const chunk of child.proc.stdout as ReadableStream<Uint8Array>) parser.feed(decoder.decode(chunk, { stream: true }));
      parser.feed("", true);
    })();
  }

  running(): boolean {
    return this.child.running();
  }

  why(): string {
    return this.child.logTail(2) || "no message";
  }

  async stop(): Promise<void> {
    await this.child.stop();
    await Promise.race([this.reading, Bun.sleep(1000)]);
  }
}

/** Every connected socket on `ports` now (`ss -t -i`), time-wait and half-open ones not included. */
async function sockets(ports: readonly number[]): Promise<SocketLine[]> {
  const filter = `( ${ports.map((p) => `sport = :${p}`).join(" or ")} )`;
  const r = await runToEnd(["ss", "-t", "-i", "-n", "-H", filter], { timeoutMs: 5000 });
  if (r.code !== 0) throw new Error(`ss -t -i failed (${r.code}): ${r.stderr.trim()}`);
  const out: SocketLine[] = [];
  new SsParser(ports, (s) => out.push(s)).feed(r.stdout, true);
  return out;
}

/** Reads every member's port once a second until stopped; `samples` grows meanwhile. */
export class Sampler {
  readonly samples: Sample[] = [];
  private readonly classifier: Classifier;
  private readonly destroys: DestroyWatch;
  private readonly ports: number[];
  private stopped = false;
  private loop: Promise<void> = Promise.resolve();
  /** Set when `ss -E` died or a reading failed: the counts after that are incomplete. */
  failure: string | null = null;

  constructor(private readonly cluster: Cluster) {
    this.ports = cluster.members.map((m) => m.clientPort);
    this.classifier = new Classifier(this.ports.length);
    this.destroys = new DestroyWatch(this.ports, this.classifier);
  }

  /** Waits until ss listens (it subscribes at once; 300 ms is ample), takes the baseline reading, then reads once a second. */
  async start(): Promise<void> {
    await Bun.sleep(300);
    if (!this.destroys.running()) throw new Error(`ss -E exited: ${this.destroys.why()}`);
    await this.read();
    this.loop = this.run();
  }

  private async run(): Promise<void> {
    const t0 = performance.now();
    for (let k = 1; !this.stopped; k++) {
      const due = t0 + k * 1000;
      while (!this.stopped && performance.now() < due) await Bun.sleep(Math.min(100, due - performance.now()));
      if (!this.stopped) await this.read();
    }
  }

  /** One reading now; a failed `ss` is recorded (the reading is skipped), never thrown. */
  private async read(): Promise<void> {
    let lines: SocketLine[];
    try {
      lines = await sockets(this.ports);
    } catch (e) {
      this.failure ??= e instanceof Error ? e.message : String(e);
      return;
    }
    const n = this.ports.length;
    const s: Sample = { at: Date.now(), established: Array(n).fill(0), clients: Array(n).fill(0), open: Array(n).fill(0), destroyed: [], clientsSeen: [], running: [] };
    const present = new Set<string>();
    for (const l of lines) {
      present.add(`${l.member}:${l.peer}`);
      const client = this.classifier.seen(l, this.samples.length === 0);
      s.open[l.member]!++;
      if (l.state !== "ESTAB") continue;
      s.established[l.member]!++;
      if (client === true) s.clients[l.member]!++;
    }
    this.classifier.sweep(present);
    s.destroyed = [...this.destroys.counts];
    s.clientsSeen = [...this.classifier.clientsSeen];
    s.running = this.ports.map((_, i) => this.cluster.isRunning(i));
    if (this.failure === null && !this.destroys.running()) this.failure = `ss -E exited: ${this.destroys.why()}`;
    this.samples.push(s);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.loop;
    await this.destroys.stop();
  }
}

/** All new connections each member accepted between readings `a` and `b` (destroyed + change in connected). */
export function accepted(a: Sample, b: Sample): number[] {
  return b.open.map((o, i) => b.destroyed[i]! - a.destroyed[i]! + o - a.open[i]!);
}

/** New client connections each member got between readings `a` and `b`. */
export function acceptedClients(a: Sample, b: Sample): number[] {
  return b.clientsSeen.map((c, i) => c - a.clientsSeen[i]!);
}

/** Requests one member served in a window, by kind: `GET /health` and gRPC calls (JSON-gateway requests included). */
export interface Served {
  health: number;
  grpc: number;
}

/**
 * The members' request counters (/metrics, see fleet-measure.ts) over a window that members may be
 * stopped and restarted in: a member is read again right before it is stopped (`beforeStop`), and a
 * restarted process counts from zero, so each process's share is its last reading minus its first.
 */
export class CounterLedger {
  private readonly done: Served[];
  private readonly open: ({ pid: number; first: MemberCounters; last: MemberCounters } | null)[];
  private began = false;

  constructor(private readonly cluster: Cluster) {
    this.done = cluster.members.map(() => ({ health: 0, grpc: 0 }));
    this.open = cluster.members.map(() => null);
  }

  /** Reads member `i` (every member when absent) now. */
  async read(i?: number): Promise<void> {
    const which = i === undefined ? this.cluster.members.map((_, j) => j) : [i];
    await Promise.all(which.map(async (j) => {
      const m = this.cluster.members[j]!;
      if (!this.cluster.isRunning(j)) return;
      const pid = m.pid;
      const c = await scrape(m.clientPort);
      if (c === null) return;
      const cur = this.open[j];
      if (cur !== null && cur !== undefined && cur.pid === pid) cur.last = c;
      else {
        if (cur !== null && cur !== undefined) this.close(j);
        // A process first read after the window began started within it: it counted from zero.
        this.open[j] = { pid, first: this.began ? { health: 0, grpc: {} } : c, last: c };
      }
    }));
  }

  /** The first reading of every member: the window begins. */
  async begin(): Promise<void> {
    await this.read();
    this.began = true;
  }

  private close(j: number): void {
    const cur = this.open[j];
    if (cur === null || cur === undefined) return;
    const sum = (c: MemberCounters) => Object.values(c.grpc).reduce((s, v) => s + v, 0);
    this.done[j]!.health += cur.last.health - cur.first.health;
    this.done[j]!.grpc += sum(cur.last) - sum(cur.first);
    this.open[j] = null;
  }

  /** Reads member `i` right before it is stopped, so that its process's count is complete. */
  async beforeStop(i: number): Promise<void> {
    await this.read(i);
    this.close(i);
  }

  /** Reads every member a last time; what each served over the window. */
  async end(): Promise<Served[]> {
    await this.read();
    for (let j = 0; j < this.open.length; j++) this.close(j);
    return this.done.map((d) => ({ ...d }));
  }
}

/** `GET /health` answers the bench itself sent to each member (to be taken out of the counts). */
export type OwnHealthChecks = number[];

/**
 * Polls member `i`'s `GET /health` every 250 ms until it says `"health":"true"`; resolves to when
 * (Unix ms). Every answered request is added to `own[i]`. @throws after `timeoutMs`, or when the
 * member exits
 */
export async function waitUsable(cluster: Cluster, i: number, own: OwnHealthChecks, timeoutMs: number): Promise<number> {
  const m = cluster.members[i]!;
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    if (!cluster.isRunning(i)) throw new Error(`etcd member ${m.name} exited while starting; log ${m.logFile}`);
    try {
      const res = await fetch(`http://127.0.0.1:${m.clientPort}/health`, { headers: { connection: "close" }, signal: AbortSignal.timeout(1000) });
      own[i]!++;
      if (((await res.json()) as { health?: string }).health === "true") return Date.now();
    } catch {
      // refused (not listening yet) or no answer
    }
    if (performance.now() > deadline) throw new Error(`etcd member ${m.name} not healthy ${timeoutMs / 1000} s after its start; log ${m.logFile}`);
    await Bun.sleep(250);
  }
}

/**
 * Starts member `i` again without waiting for it: Cluster.restart spawns the process before its
 * first wait (test/support/cluster.ts), and a wait of 0 ms gives up after one `GET /health`, made
 * before the member listens (refused, so etcd counts nothing). `waitUsable` then waits, counted.
 */
export function startMember(cluster: Cluster, i: number): void {
  if (cluster.isRunning(i)) return;
  void cluster.restart(i, 0).catch(() => undefined);
  if (!cluster.isRunning(i)) throw new Error(`etcd member m${i} did not start`);
}
