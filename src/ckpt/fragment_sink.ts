/**
 * Replicas of a fragment written while it is written: the writer hands each sink the file's bytes
 * in order, and a checkpoint commits only once every sink has its copy durable.
 */

/**
 * Where a fragment's bytes are copied while they are written: another host's replica of the file.
 * It receives the file's bytes in file order (header, chunks, index and footer), each write after
 * the previous one resolved, so a slow copy holds the writer back instead of piling up.
 */
export interface FragmentSink {
  /**
   * The next bytes of the file; resolves once they are on their way. The writer hands each array
   * over for good (it never changes one afterwards), so a sink may keep it without copying.
   */
  write(bytes: Uint8Array): Promise<void>;
  /** The file is complete: resolves once the copy is durable there. */
  finish(): Promise<void>;
  /** The file is abandoned: the copy is removed. Never rejects. */
  abort(): Promise<void>;
}

/** One sink that copies to every one of `sinks` at once; it fails when any of them does. */
export function teeSinks(sinks: FragmentSink[]): FragmentSink {
  return {
    write: async (bytes) => {
      await Promise.all(sinks.map((s) => s.write(bytes)));
    },
    finish: async () => {
      await Promise.all(sinks.map((s) => s.finish()));
    },
    abort: async () => {
      await Promise.all(sinks.map((s) => s.abort()));
    },
  };
}
