/**
 * Listening sockets a gateway is handed instead of binding them: by systemd's socket activation
 * (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`; contrib/systemd/etcd-gateway.socket), or by the
 * gateway it replaces in an upgrade in place (`ETCD_GATEWAY_LISTEN_FDS`, src/upgrade.ts), which is
 * also how a worker gets its sockets from its primary (src/workers.ts). Each descriptor is checked
 * (a stream socket that listens), matched to a `--listen-addr` or `--admin-addr` by the address
 * it is bound to (or, from systemd, by `FileDescriptorName=listen` or `admin`), and marked
 * close-on-exec. The socket never closes while any holder is left, so a connect made meanwhile
 * waits in its backlog; docs/restarts.md says why that is the whole trick.
 *
 * @module
 */
import type { ListenAddress } from "./addresses.ts";
import { ConfigError } from "./flags.ts";
import { closeOnExec, isListeningStream, socketName, type SocketName } from "./libc.ts";

/** Environment variable naming the descriptors a process is handed by its predecessor or primary (JSON). */
export const HANDOVER_ENV = "ETCD_GATEWAY_LISTEN_FDS";
/** The first descriptor after stdin, stdout and stderr: where handed sockets start (as in sd_listen_fds). */
export const FIRST_FD = 3;

/** Who keeps the socket beyond this process: systemd (never unlink its file), or the gateway itself. */
export type Owner = "systemd" | "gateway";

/** One descriptor handed to this process. */
export interface Inherited {
  readonly fd: number;
  /** systemd's FileDescriptorName= (the socket unit's name by default); empty from a gateway. */
  readonly name: string;
  readonly owner: Owner;
  /** What the socket is bound to. */
  readonly at: SocketName;
}

/** How a handing process describes one descriptor, in `HANDOVER_ENV`, in descriptor order from FIRST_FD. */
export interface HandedSocket {
  readonly owner: Owner;
}

/** What a process started with `sockets` needs: the descriptors, to pass from 3 on (stdio), and the variable that describes them. */
export function handOver(sockets: readonly { fd: number; owner: Owner }[]): { fds: number[]; env: Record<string, string> } {
  return { fds: sockets.map((s) => s.fd), env: { [HANDOVER_ENV]: JSON.stringify(sockets.map((s): HandedSocket => ({ owner: s.owner }))) } };
}

/** `127.0.0.1:23790`, `[::1]:23790` or `unix:///path`: a bound address as the flags write it. */
export function nameText(at: SocketName): string {
  if (at.family === "unix") return `unix://${at.path}`;
  return at.host.includes(":") ? `[${at.host}]:${at.port}` : `${at.host}:${at.port}`;
}

function check(fd: number, what: string): SocketName {
  const listening = isListeningStream(fd);
  if (listening !== true) throw new ConfigError("listen-addr", null, `${what} is not a listening socket (${listening}); nothing was started`);
  const at = socketName(fd);
  if (typeof at === "string") throw new ConfigError("listen-addr", null, `${what}: getsockname: ${at}`);
  closeOnExec(fd);
  return at;
}

/** systemd's sockets, when `LISTEN_PID` is this process (sd_listen_fds). */
function fromSystemd(env: Record<string, string | undefined>, pid: number): Inherited[] {
  const count = env.LISTEN_FDS;
  if (count === undefined || env.LISTEN_PID !== String(pid)) return [];
  if (!/^\d+$/.test(count)) throw new ConfigError("listen-addr", null, `LISTEN_FDS=${JSON.stringify(count)} from systemd is not a number`);
  const names = (env.LISTEN_FDNAMES ?? "").split(":");
  const out: Inherited[] = [];
  for (let i = 0; i < Number(count); i++) {
    const fd = FIRST_FD + i;
    const name = names[i] ?? "";
    out.push({ fd, name, owner: "systemd", at: check(fd, `descriptor ${fd} from systemd${name === "" ? "" : ` (FileDescriptorName=${name})`}`) });
  }
  return out;
}

/** The sockets of a predecessor or a primary, described in `HANDOVER_ENV`. */
function fromGateway(text: string | undefined, after: number): Inherited[] {
  if (text === undefined) return [];
  let list: HandedSocket[];
  try {
    list = JSON.parse(text) as HandedSocket[];
    if (!Array.isArray(list)) throw new Error("not a list");
  } catch (e) {
    throw new ConfigError("listen-addr", null, `${HANDOVER_ENV} is not the list a gateway hands over: ${e instanceof Error ? e.message : String(e)}`);
  }
  return list.map((h, i) => {
    const fd = after + i;
    return { fd, name: "", owner: h.owner === "systemd" ? "systemd" : "gateway", at: check(fd, `descriptor ${fd} handed over by the previous gateway`) };
  });
}

/**
 * Takes the sockets this process was handed, systemd's first, and removes the variables that
 * named them, so that no process it starts takes them for its own.
 *
 * @throws {ConfigError} naming a descriptor that is not a listening stream socket.
 */
export function takeInherited(env: Record<string, string | undefined> = process.env, pid: number = process.pid): Inherited[] {
  const systemd = fromSystemd(env, pid);
  const handed = fromGateway(env[HANDOVER_ENV], FIRST_FD + systemd.length);
  for (const k of ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", HANDOVER_ENV]) delete env[k];
  return [...systemd, ...handed];
}

/** Whether a socket bound to `at` serves `a`: the same path, or the same port and host (`localhost` is 127.0.0.1 or ::1). */
export function serves(at: SocketName, a: ListenAddress): boolean {
  if (a.kind === "unix") return at.family === "unix" && at.path === a.path;
  if (at.family !== "tcp" || a.tcp.port !== at.port) return false;
  const want = a.tcp.host;
  return want === at.host || (want === "localhost" && (at.host === "127.0.0.1" || at.host === "::1"));
}

/** The handed sockets sorted to the addresses they serve. */
export interface Matched {
  /** By `--listen-addr` address: its sockets (several: one per worker). */
  readonly listen: Map<string, Inherited[]>;
  /** By `--admin-addr` address. */
  readonly admin: Map<string, Inherited>;
  /** A predecessor's sockets no address wants any more (the caller closes them). */
  readonly unused: Inherited[];
}

/** A systemd socket with FileDescriptorName=listen or admin stands for the one address of that role no other socket serves. */
function byName(s: Inherited, listen: readonly ListenAddress[], admin: readonly ListenAddress[], m: Matched): boolean {
  const role = s.name === "listen" ? listen : s.name === "admin" ? admin : null;
  if (role === null) return false;
  const kind = s.at.family;
  const free = role.filter((a) => a.kind === kind && !(s.name === "listen" ? m.listen.has(a.address) : m.admin.has(a.address)));
  if (free.length !== 1) {
    const flag = s.name === "listen" ? "listen-addr" : "admin-addr";
    throw new ConfigError(flag, null, `systemd passed a socket named ${s.name} on ${nameText(s.at)}, but ${free.length === 0 ? `no --${flag} of its kind is left for it` : `${free.length} ${kind} addresses of --${flag} could take it (${free.map((a) => a.address).join(", ")})`}; give ListenStream= the exact address`);
  }
  if (s.name === "listen") m.listen.set(free[0]!.address, [s]);
  else m.admin.set(free[0]!.address, s);
  return true;
}

/**
 * Sorts `handed` to the `listen` and `admin` addresses, by the address each is bound to, then (from
 * systemd) by FileDescriptorName=.
 *
 * @throws {ConfigError} for a systemd socket that serves no configured address.
 */
export function matchInherited(handed: readonly Inherited[], listen: readonly ListenAddress[], admin: readonly ListenAddress[]): Matched {
  const m: Matched = { listen: new Map(), admin: new Map(), unused: [] };
  const named: Inherited[] = [];
  for (const s of handed) {
    const l = listen.find((a) => serves(s.at, a));
    if (l !== undefined) {
      m.listen.set(l.address, [...(m.listen.get(l.address) ?? []), s]);
      continue;
    }
    const a = admin.find((x) => serves(s.at, x) && !m.admin.has(x.address));
    if (a !== undefined) m.admin.set(a.address, s);
    else if (s.owner === "systemd") named.push(s);
    else m.unused.push(s);
  }
  for (const s of named) {
    if (byName(s, listen, admin, m)) continue;
    const wanted = [...listen.map((a) => a.address), ...admin.map((a) => a.address)].join(", ");
    throw new ConfigError("listen-addr", nameText(s.at), `systemd passed a socket on ${nameText(s.at)} (descriptor ${s.fd}, FileDescriptorName=${s.name}) that serves none of ${wanted}; make ListenStream= one of them, or set FileDescriptorName=listen or admin`);
  }
  return m;
}
