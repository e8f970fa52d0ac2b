/** The inbox of byte chunks lives with the dispatcher in src/rpc; src/paging still imports it here. */

/** An inbox of byte chunks (see src/rpc/inbox.ts). */
export { Inbox } from "../rpc/inbox.ts";
