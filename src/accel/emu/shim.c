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
 *
 * Copy-on-write: while a cow save runs, the store hook copies a page aside before the guest's first
 * write to it (the hook runs before the store). A per-page state shared with the saver decides who
 * handles a page: MUST (not yet saved) -> COPYING -> ASIDE when a vCPU copies it first, MUST ->
 * SAVING -> SAVED when the saver claims it first; a store to a page the saver is writing out waits.
 * The emulator's own stores (interrupt frames) go through the same gate.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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

enum { COW_NONE = 0, COW_MUST = 1, COW_SAVING = 2, COW_SAVED = 3, COW_ASIDE = 4, COW_COPYING = 5 };

/* One copy-on-write save. */
struct dcres_cow {
  uint8_t *state;
  uint8_t *aside;
  uint64_t copied;
};

/* What a VM's vCPUs share: the dirty byte per page, and the copy-on-write save if one runs. */
struct dcres_vm {
  uint8_t *ram;
  uint64_t pages;
  struct dcres_cow *cow;
  uint32_t hooks_in_cow;
  uint8_t dirty[];
};

typedef uint32_t (*dcres_io_cb)(uint32_t dir, uint32_t port, uint32_t size, uint32_t value);

struct dcres_vcpu {
  const volatile int32_t *kick;
  volatile uint32_t pending;
  uint32_t exit_reason;
  uint32_t exit_vector;
  uint32_t blocks;
  uint64_t deadline_ns;
  struct dcres_vm *vm;
  uint64_t ram_size;
  dcres_io_cb io;
  uc_hook h_block, h_write, h_in, h_out, h_intr;
  /* The pages of the last store, marked dirty again once it has landed (see settle). */
  uint64_t stored_first, stored_last;
  int stored;
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

/*
 * Unicorn calls the store hook before the store lands. A harvest between the hook's dirty mark and
 * the store would take the mark and let the VMM copy the old contents, and nothing would mark the
 * page again: a precopy round or a split migration would keep a stale page. So the pages of each
 * store are marked again once it has landed: at the next store, the next block, or the end of a run.
 */
static void settle(struct dcres_vcpu *v) {
  if (!v->stored) return;
  v->stored = 0;
  for (uint64_t g = v->stored_first; g <= v->stored_last; g++) {
    __atomic_store_n(&v->vm->dirty[g], 1, __ATOMIC_RELEASE);
  }
}

static void on_block(uc_engine *uc, uint64_t address, uint32_t size, void *user) {
  struct dcres_vcpu *v = user;
  (void)address;
  (void)size;
  settle(v);
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

static void pause_briefly(void) {
  struct timespec ts = {0, 20000};
  nanosleep(&ts, NULL);
}

/* Before page `g` changes during a cow save: copy it aside, or wait while the saver writes it. */
static void cow_before_write(struct dcres_vm *vm, struct dcres_cow *c, uint64_t g) {
  for (;;) {
    uint8_t s = __atomic_load_n(&c->state[g], __ATOMIC_ACQUIRE);
    if (s == COW_MUST) {
      uint8_t expect = COW_MUST;
      if (__atomic_compare_exchange_n(&c->state[g], &expect, COW_COPYING, 0, __ATOMIC_ACQ_REL,
                                      __ATOMIC_ACQUIRE)) {
        memcpy(c->aside + (g << 12), vm->ram + (g << 12), 4096);
        __atomic_store_n(&c->state[g], COW_ASIDE, __ATOMIC_RELEASE);
        __atomic_add_fetch(&c->copied, 1, __ATOMIC_RELAXED);
        return;
      }
    } else if (s == COW_SAVING || s == COW_COPYING) {
      pause_briefly();
    } else {
      return;
    }
  }
}

/* Marks pages [first, last] written and lets a running cow save see them first. */
static void before_write(struct dcres_vm *vm, uint64_t first, uint64_t last) {
  if (last >= vm->pages) last = vm->pages - 1;
  for (uint64_t g = first; g <= last; g++) vm->dirty[g] = 1;
  if (!__atomic_load_n(&vm->cow, __ATOMIC_RELAXED)) return;
  __atomic_add_fetch(&vm->hooks_in_cow, 1, __ATOMIC_SEQ_CST);
  struct dcres_cow *c = __atomic_load_n(&vm->cow, __ATOMIC_SEQ_CST);
  if (c) {
    for (uint64_t g = first; g <= last; g++) cow_before_write(vm, c, g);
  }
  __atomic_sub_fetch(&vm->hooks_in_cow, 1, __ATOMIC_SEQ_CST);
}

static void on_write(uc_engine *uc, uc_mem_type type, uint64_t address, int size, int64_t value,
                     void *user) {
  struct dcres_vcpu *v = user;
  (void)uc;
  (void)type;
  (void)value;
  if (address >= v->ram_size) return;
  settle(v);
  uint64_t first = address >> 12;
  uint64_t last = (address + (uint64_t)(size > 0 ? size - 1 : 0)) >> 12;
  if (last >= v->vm->pages) last = v->vm->pages - 1;
  before_write(v->vm, first, last);
  v->stored_first = first;
  v->stored_last = last;
  v->stored = 1;
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
struct dcres_vcpu *dcres_emu_attach(uc_engine *uc, const int32_t *kick, struct dcres_vm *vm,
                                    const uint8_t *claimed, dcres_io_cb io) {
  struct dcres_vcpu *v = calloc(1, sizeof *v);
  if (!v) return NULL;
  v->kick = kick;
  v->vm = vm;
  v->ram_size = vm->pages << 12;
  v->io = io;
  memcpy(v->claimed, claimed, PORTS);
  if (uc_hook_add(uc, &v->h_block, UC_HOOK_BLOCK, on_block, v, 1, 0) ||
      uc_hook_add(uc, &v->h_write, UC_HOOK_MEM_WRITE, on_write, v, 0, v->ram_size - 1) ||
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

/* After a run: the last store has landed, mark its pages again (see settle). */
void dcres_emu_settle(struct dcres_vcpu *v) { settle(v); }

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

/* The state a VM's vCPUs share over guest RAM at `ram` (`pages` pages). */
struct dcres_vm *dcres_emu_vm_alloc(uint8_t *ram, uint64_t pages) {
  struct dcres_vm *vm = calloc(1, sizeof *vm + (pages ? pages : 1));
  if (!vm) return NULL;
  vm->ram = ram;
  vm->pages = pages;
  return vm;
}

/* Frees a VM's shared state; its vCPUs are gone and no cow save runs. */
void dcres_emu_vm_free(struct dcres_vm *vm) { free(vm); }

/* Before the emulator itself writes guest pages [first, first+count): dirty, and cow first. */
void dcres_emu_before_write(struct dcres_vm *vm, uint64_t first, uint64_t count) {
  if (count) before_write(vm, first, first + count - 1);
}

/* After the emulator itself wrote guest pages [first, first+count): dirty again (see settle). */
void dcres_emu_after_write(struct dcres_vm *vm, uint64_t first, uint64_t count) {
  for (uint64_t g = first; g < first + count && g < vm->pages; g++) {
    __atomic_store_n(&vm->dirty[g], 1, __ATOMIC_RELEASE);
  }
}

/* ORs the written pages into `bitmap` (bit per page, KVM's layout) and clears them; the count. */
uint64_t dcres_emu_dirty_harvest(struct dcres_vm *vm, uint8_t *bitmap) {
  uint8_t *dirty = vm->dirty;
  uint64_t pages = vm->pages;
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

/*
 * Starts a cow save of the pages set in `wanted` (bit per page), with the vCPUs paused. Returns the
 * address pages are copied aside at (page g at g * 4096), or NULL when memory ran out.
 */
uint8_t *dcres_emu_cow_begin(struct dcres_vm *vm, const uint8_t *wanted) {
  if (vm->cow) return NULL;
  struct dcres_cow *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->state = calloc(vm->pages, 1);
  c->aside = mmap(NULL, vm->pages << 12, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (!c->state || c->aside == MAP_FAILED) {
    free(c->state);
    if (c->aside != MAP_FAILED) munmap(c->aside, vm->pages << 12);
    free(c);
    return NULL;
  }
  for (uint64_t g = 0; g < vm->pages; g++) {
    if (wanted[g >> 3] & (1u << (g & 7))) c->state[g] = COW_MUST;
  }
  __atomic_store_n(&vm->cow, c, __ATOMIC_SEQ_CST);
  return c->aside;
}

/*
 * The saver takes pages: kinds[i] = 0 when gfns[i] is now the saver's to write from guest memory
 * (release it after), 1 when it was copied aside (write it from the aside copy), 2 when there is
 * nothing to save (not wanted, or saved already).
 */
void dcres_emu_cow_claim(struct dcres_vm *vm, const uint32_t *gfns, uint64_t n, uint8_t *kinds) {
  struct dcres_cow *c = vm->cow;
  for (uint64_t i = 0; i < n; i++) {
    uint32_t g = gfns[i];
    kinds[i] = 2;
    if (!c || g >= vm->pages) continue;
    for (;;) {
      uint8_t expect = COW_MUST;
      if (__atomic_compare_exchange_n(&c->state[g], &expect, COW_SAVING, 0, __ATOMIC_ACQ_REL,
                                      __ATOMIC_ACQUIRE)) {
        kinds[i] = 0;
        break;
      }
      if (expect == COW_COPYING) {
        pause_briefly();
        continue;
      }
      if (expect == COW_ASIDE) kinds[i] = 1;
      break;
    }
  }
}

/* The saver wrote these claimed pages out: the guest may change them now. */
void dcres_emu_cow_release(struct dcres_vm *vm, const uint32_t *gfns, uint64_t n) {
  struct dcres_cow *c = vm->cow;
  if (!c) return;
  for (uint64_t i = 0; i < n; i++) {
    if (gfns[i] < vm->pages) __atomic_store_n(&c->state[gfns[i]], COW_SAVED, __ATOMIC_RELEASE);
  }
}

/* Pages copied aside so far. */
uint64_t dcres_emu_cow_copied(struct dcres_vm *vm) {
  struct dcres_cow *c = vm->cow;
  return c ? __atomic_load_n(&c->copied, __ATOMIC_RELAXED) : 0;
}

/* Ends the cow save: no store waits or copies any more once this returns; frees its memory. */
void dcres_emu_cow_end(struct dcres_vm *vm) {
  struct dcres_cow *c = vm->cow;
  if (!c) return;
  for (uint64_t g = 0; g < vm->pages; g++) {
    uint8_t s = __atomic_load_n(&c->state[g], __ATOMIC_ACQUIRE);
    if (s == COW_SAVING) __atomic_store_n(&c->state[g], COW_SAVED, __ATOMIC_RELEASE);
  }
  __atomic_store_n(&vm->cow, NULL, __ATOMIC_SEQ_CST);
  while (__atomic_load_n(&vm->hooks_in_cow, __ATOMIC_SEQ_CST)) pause_briefly();
  munmap(c->aside, vm->pages << 12);
  free(c->state);
  free(c);
}
