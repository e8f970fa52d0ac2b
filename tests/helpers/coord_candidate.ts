/**
 * A coordinator candidate in its own process, for election tests: opens the store ARGS[0],
 * campaigns as ARGS[1] with a lease of ARGS[2] ms, prints `leader TERM` once elected and keeps
 * renewing until it is killed.
 */
import { openState } from "../../src/coord/open_state.ts";

const [store, id, ttl] = Deno.args;
const state = await openState(store);
const lead = await state.campaign(id, Number(ttl));
console.log(`leader ${lead.term}`);
