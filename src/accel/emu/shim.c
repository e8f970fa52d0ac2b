/*
 * dcres emulated-CPU shim: the hooks Unicorn calls per translated block, per guest store and per
 * port access, in C, because a JavaScript callback per block costs ~120 ns against ~1 ns here.
 * Built by shim_build.ts with the system's gcc against Debian's libunicorn-dev; loaded through
 * Deno FFI next to libunicorn.so.2 (src/ffi/emu_shim.ts binds it).
 *
 * Stopping is only ever done from the block hook: uc_emu_stop from another thread, or from a hook
 * in the middle of a block, leaves RIP at the start of a block that already partly ran, so a
 * resume would replay its stores. Other threads set the kick word, hooks set `pending`, and the next
 * block start turns either into a clean stop with RIP at that block. The kick word lives in memory
 * the VMM thread owns (a SharedArrayBuffer), so a kick that races the vCPU's teardown never writes
 * into freed shim state.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unicorn/unicorn.h>

enum {
  EXIT_NONE = 0,
  EXIT_KICK = 1,      /* another thread asked the vCPU to leave guest code */
  EXIT_TIMER = 2,     /* the LAPIC timer deadline passed */
  EXIT_EXCEPTION = 3, /* the guest raised an exception (Unicorn never delivers them) */
  EXIT_LAPIC = 4,     /* the guest reprogrammed the LAPIC timer */
};

enum { PENDING_LAPIC = 1 };

#define LAPIC_BASE 0xfee00000ull
#define LAPIC_BYTES 0x1000
#define PORTS 65536
#define CLOCK_CHECK_MASK 63u

typedef uint32_t (*dcres_io_cb)(uint32_t dir, uint32_t port, uint32_t size, uint32_t value);

struct dcres_vcpu {
  const volatile int32_t *kick;
  volatile uint32_t pending;
  uint32_t exit_reason;
  uint32_t exit_vector;
  uint32_t blocks;
  uint64_t deadline_ns;
  uint8_t *dirty;
  uint64_t ram_size;
  dcres_io_cb io;
  uc_hook h_block, h_write, h_in, h_out, h_intr;
  uint8_t lapic[LAPIC_BYTES];
  uint8_t claimed[PORTS];
};

uint64_t dcres_emu_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void stop_with(uc_engine *uc, struct dcres_vcpu *v, uint32_t reason) {
  v->exit_reason = reason;
  uc_emu_stop(uc);
}

static void on_block(uc_engine *uc, uint64_t address, uint32_t size, void *user) {
  struct dcres_vcpu *v = user;
  (void)address;
  (void)size;
  if (__atomic_load_n(v->kick, __ATOMIC_ACQUIRE)) {
    stop_with(uc, v, EXIT_KICK);
  } else if (v->pending & PENDING_LAPIC) {
    v->pending &= ~PENDING_LAPIC;
    stop_with(uc, v, EXIT_LAPIC);
  } else if (v->deadline_ns && (++v->blocks & CLOCK_CHECK_MASK) == 0 &&
             dcres_emu_now_ns() >= v->deadline_ns) {
    stop_with(uc, v, EXIT_TIMER);
  }
}

static void on_write(uc_engine *uc, uc_mem_type type, uint64_t address, int size, int64_t value,
                     void *user) {
  struct dcres_vcpu *v = user;
  (void)uc;
  (void)type;
  (void)value;
  uint64_t last = address + (uint64_t)(size > 0 ? size - 1 : 0);
  if (address < v->ram_size) v->dirty[address >> 12] = 1;
  if (last < v->ram_size) v->dirty[last >> 12] = 1;
}

static uint32_t on_in(uc_engine *uc, uint32_t port, int size, void *user) {
  struct dcres_vcpu *v = user;
  (void)uc;
  if (!v->claimed[port & 0xffff]) return size >= 4 ? 0xffffffffu : (1u << (8 * size)) - 1;
  return v->io(0, port, (uint32_t)size, 0);
}

static void on_out(uc_engine *uc, uint32_t port, int size, uint32_t value, void *user) {
  struct dcres_vcpu *v = user;
  (void)uc;
  if (v->claimed[port & 0xffff]) v->io(1, port, (uint32_t)size, value);
}

static void on_intr(uc_engine *uc, uint32_t intno, void *user) {
  struct dcres_vcpu *v = user;
  v->exit_vector = intno;
  stop_with(uc, v, EXIT_EXCEPTION);
}

static uint64_t lapic_read(uc_engine *uc, uint64_t offset, unsigned size, void *user) {
  struct dcres_vcpu *v = user;
  (void)uc;
  uint32_t value = 0;
  if (offset + 4 <= 1024 && size <= 4) memcpy(&value, v->lapic + (offset & ~3ull), 4);
  return value;
}

static void lapic_write(uc_engine *uc, uint64_t offset, unsigned size, uint64_t value, void *user) {
  struct dcres_vcpu *v = user;
  (void)uc;
  if (offset + 4 > 1024 || size > 4) return;
  uint32_t word = (uint32_t)value;
  memcpy(v->lapic + (offset & ~3ull), &word, 4);
  if (offset == 0x320 || offset == 0x380 || offset == 0x3e0) v->pending |= PENDING_LAPIC;
}

/* Installs the hooks on `uc` and maps the LAPIC page; returns the vCPU's shim state or NULL. */
struct dcres_vcpu *dcres_emu_attach(uc_engine *uc, const int32_t *kick, uint8_t *dirty,
                                    uint64_t ram_size, const uint8_t *claimed, dcres_io_cb io) {
  struct dcres_vcpu *v = calloc(1, sizeof *v);
  if (!v) return NULL;
  v->kick = kick;
  v->dirty = dirty;
  v->ram_size = ram_size;
  v->io = io;
  memcpy(v->claimed, claimed, PORTS);
  if (uc_hook_add(uc, &v->h_block, UC_HOOK_BLOCK, on_block, v, 1, 0) ||
      uc_hook_add(uc, &v->h_write, UC_HOOK_MEM_WRITE, on_write, v, 0, ram_size - 1) ||
      uc_hook_add(uc, &v->h_in, UC_HOOK_INSN, on_in, v, 1, 0, UC_X86_INS_IN) ||
      uc_hook_add(uc, &v->h_out, UC_HOOK_INSN, on_out, v, 1, 0, UC_X86_INS_OUT) ||
      uc_hook_add(uc, &v->h_intr, UC_HOOK_INTR, on_intr, v, 1, 0) ||
      uc_mmio_map(uc, LAPIC_BASE, LAPIC_BYTES, lapic_read, v, lapic_write, v)) {
    free(v);
    return NULL;
  }
  return v;
}

/* Frees what attach allocated; the engine must be closed or never run again. */
void dcres_emu_detach(struct dcres_vcpu *v) { free(v); }

/* Sets the timer deadline in dcres_emu_now_ns() time; 0 disables it. */
void dcres_emu_set_deadline(struct dcres_vcpu *v, uint64_t ns) { v->deadline_ns = ns; }

/* The reason of the last stop (EXIT_*), and clears it. */
uint32_t dcres_emu_take_exit(struct dcres_vcpu *v) {
  uint32_t r = v->exit_reason;
  v->exit_reason = EXIT_NONE;
  return r;
}

/* The vector of the last exception. */
uint32_t dcres_emu_exit_vector(struct dcres_vcpu *v) { return v->exit_vector; }

/* The LAPIC register page (1024 bytes used of 4096). */
uint8_t *dcres_emu_lapic(struct dcres_vcpu *v) { return v->lapic; }

/* One byte per guest page, shared by a VM's vCPUs. */
uint8_t *dcres_emu_dirty_alloc(uint64_t pages) { return calloc(pages ? pages : 1, 1); }

/* Frees a dirty array. */
void dcres_emu_dirty_free(uint8_t *dirty) { free(dirty); }

/* Marks pages [first, first+count) written, for stores the emulator's own code makes. */
void dcres_emu_dirty_mark(uint8_t *dirty, uint64_t first, uint64_t count) {
  for (uint64_t i = 0; i < count; i++) __atomic_store_n(&dirty[first + i], 1, __ATOMIC_RELAXED);
}

/* ORs the written pages into `bitmap` (bit per page, KVM's layout) and clears them; the count. */
uint64_t dcres_emu_dirty_harvest(uint8_t *dirty, uint8_t *bitmap, uint64_t pages) {
  uint64_t n = 0;
  for (uint64_t base = 0; base < pages; base += 8) {
    uint64_t word;
    uint64_t left = pages - base;
    if (left >= 8) {
      memcpy(&word, dirty + base, 8);
      if (word == 0) continue;
    }
    uint8_t bits = 0;
    for (uint64_t k = 0; k < 8 && k < left; k++) {
      if (__atomic_exchange_n(&dirty[base + k], 0, __ATOMIC_ACQ_REL)) {
        bits |= (uint8_t)(1u << k);
        n++;
      }
    }
    bitmap[base >> 3] |= bits;
  }
  return n;
}
