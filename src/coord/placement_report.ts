/**
 * Where VMs run, as a host's heartbeat reports it: the placement changes one report makes (a VM
 * running on a host becomes placed there, with its split's hosts as subs; one its placed main no
 * longer reports is unplaced; one running where its failed main was placed is adopted).
 */
import { isName } from "../codec/names.ts";
import type { HostWatch } from "./host_watch.ts";
import { runsHere, splitAddrs } from "./recovery.ts";
import type { Placement, StateOp, Versioned } from "./state.ts";

/**
 * The placement changes from `h`'s report, among `hosts`, over `placements` (by VM; the ones
 * deleted are taken out of it), leaving alone VMs `busy` says are being restored. Each element is
 * one commit.
 */
export function placementOps(
  h: HostWatch,
  hosts: readonly HostWatch[],
  placements: Map<string, Versioned<Placement>>,
  busy: (vm: string) => boolean,
): StateOp[][] {
  const out: StateOp[][] = [];
  const reported = new Set<string>();
  for (const vm of h.vms) {
    if (!isName("vm", vm.name)) continue;
    reported.add(vm.name);
    // A VM being restored is placed by the restore.
    if (busy(vm.name)) continue;
    const subs = splitAddrs(hosts, h, vm.name).filter((s) => isName("host", s));
    const was = placements.get(vm.name);
    const old = was?.value;
    if (old && old.main === h.addr && old.subs.join(",") === subs.join(",")) continue;
    // A copy that does not run (fenced, paused) does not take the VM from where it is placed.
    if (old && old.main !== h.addr && !runsHere(h, vm.name)) continue;
    const put: StateOp = {
      op: "put",
      kind: "placement",
      value: { vm: vm.name, main: h.addr, subs },
    };
    const from = old && hosts.find((x) => x.addr === old.main);
    if (!from || from.state === "up") {
      out.push([put]);
      continue;
    }
    // Its host failed and someone runs it here already: adopted, not restored.
    out.push([{ ...put, expect: was!.rev }, {
      op: "event",
      event: {
        kind: "adopted",
        timeMs: Date.now(),
        vm: vm.name,
        host: h.addr,
        detail: `${vm.name} runs on ${h.name} while ${from.name} is ${from.state ?? "unknown"}`,
      },
    }]);
  }
  // A VM whose VMM did not answer in time is there still, as far as anyone knows.
  for (const vm of h.unanswered) reported.add(vm);
  for (const [vm, p] of placements) {
    if (p.value.main === h.addr && !reported.has(vm) && !busy(vm)) {
      out.push([{ op: "delete", kind: "placement", key: vm }]);
      placements.delete(vm);
    }
  }
  return out;
}
