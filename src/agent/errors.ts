/** Errors of the agent layer. */

/** A VMM process could not be started; the message carries the reason from its log. */
export class VmmStartError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "VmmStartError";
  }
}
