/**
 * Builds the Linux guest's initramfs, target/guest/initramfs.cpio.gz, from Debian's busybox-static,
 * and names the kernel the VMM will pair it with.
 *
 *   scripts/build-guest-image [--busybox PATH] [--out FILE]
 */
import { parseArgs } from "node:util";
import { buildInitramfs, DEFAULT_BUSYBOX, findGuestKernel } from "../src/vmm/boot/initramfs.ts";

const root = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

/** Parses arguments, writes the archive, prints where it went; returns the exit code. */
export async function main(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      busybox: { type: "string", default: DEFAULT_BUSYBOX },
      out: { type: "string", default: `${root}/target/guest/initramfs.cpio.gz` },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log("usage: scripts/build-guest-image [--busybox PATH] [--out FILE]");
    return 0;
  }
  const image = await buildInitramfs({ busybox: values.busybox });
  const out = values.out;
  await Deno.mkdir(out.slice(0, out.lastIndexOf("/")) || ".", { recursive: true });
  // Write then rename, so a VMM never picks up a half-written archive.
  await Deno.writeFile(`${out}.tmp`, image);
  await Deno.rename(`${out}.tmp`, out);
  console.log(`${out}: ${(image.length / 1024).toFixed(0)} KiB initramfs from ${values.busybox}`);
  const kernel = findGuestKernel();
  console.log(
    kernel ? `kernel: ${kernel}` : "kernel: none in /boot; install linux-image-cloud-amd64",
  );
  return 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    console.error(`build-guest-image: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
