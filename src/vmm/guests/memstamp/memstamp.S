# memstamp: the built-in bare-metal guest. The workload runs in ring 3 (IOPL 3, so port I/O still
# exits to the VMM) because on PVM hosts only guest user-mode code runs natively. Ring 0 holds just
# the LAPIC timer handler and the exception stubs. Assembled once by scripts/build-memstamp into
# code.ts; the VMM lays out GDT, IDT, TSS, page tables and the config page itself (layout.ts).
# The constants below must match layout.ts; tests/memstamp_layout_test.ts checks them.
        .intel_syntax noprefix
        .code64
        .text

        .set CFG, 0x4000
        .set C_NVCPUS, 0x08
        .set C_TABLE, 0x10
        .set C_BASEGFN, 0x18
        .set C_PAGES, 0x20
        .set C_WS, 0x28
        .set C_PATTERN, 0x30
        .set C_STRIDE, 0x38
        .set C_INTERVAL, 0x40
        .set C_CMDSEQ, 0x48
        .set C_CMD, 0x50
        .set C_DELAY, 0x58

        .set S_PHASE, 0x00
        .set S_WRITTEN, 0x08
        .set S_TICKS, 0x10
        .set S_PASSES, 0x18
        .set S_CMDSEQ, 0x20
        .set S_RESULT, 0x28
        .set S_BADGFN, 0x30
        .set S_REASON, 0x38
        .set S_EXPECT, 0x40
        .set S_FOUND, 0x48
        .set S_VERIFIED, 0x50
        .set S_START, 0x58
        .set S_COUNT, 0x60
        .set S_STAMPED, 0x68

        .set PORT_EVENT, 0x510
        .set PORT_FAULT, 0x514
        .set EV_STAMPED, 1
        .set EV_PROGRESS, 2
        .set EV_CMD_DONE, 3
        .set LAPIC_EOI, 0xfee000b0

# Entry in ring 3: rdi = vCPU index, rsi = this vCPU's status block, rsp = its user stack.
        .globl user_entry
user_entry:
        mov r15, CFG
        mov r14, rsi
        mov rbp, rdi
        # This vCPU's share of the data pages: [pages*i/n, pages*(i+1)/n).
        mov rax, [r15 + C_PAGES]
        mul rbp
        div qword ptr [r15 + C_NVCPUS]
        mov r13, rax
        mov rax, [r15 + C_PAGES]
        lea rcx, [rbp + 1]
        mul rcx
        div qword ptr [r15 + C_NVCPUS]
        sub rax, r13
        mov r12, rax
        add r13, [r15 + C_BASEGFN]
        mov [r14 + S_START], r13
        mov [r14 + S_COUNT], r12
        mov rbx, [r15 + C_TABLE]
        mov r11, [r15 + C_WS]
        cmp r11, r12
        jbe 1f
        mov r11, r12
1:      test r11, r11
        jnz 2f
        mov r11, 1
2:      mov r9, 0x2545f4914f6cdd1d
        lea rax, [rbp + 1]
        imul r9, rax
        xor r10, r10
        # Stamp every page of the share with version 1.
        mov qword ptr [r14 + S_PHASE], 1
        xor r8, r8
3:      cmp r8, r12
        jae 4f
        lea rdi, [r13 + r8]
        mov esi, 1
        push r8
        call stamp
        pop r8
        mov rcx, rdi
        sub rcx, [r15 + C_BASEGFN]
        mov dword ptr [rbx + rcx*4], 1
        inc r8
        mov [r14 + S_STAMPED], r8
        jmp 3b
4:      mov qword ptr [r14 + S_PHASE], 2
        mov eax, ebp
        shl eax, 16
        or eax, EV_STAMPED
        mov dx, PORT_EVENT
        out dx, eax

main_loop:
        mov rax, [r15 + C_CMDSEQ]
        cmp rax, [r14 + S_CMDSEQ]
        jne handle_cmd
        mov rax, [r15 + C_PATTERN]
        cmp rax, 1
        je pick_random
        cmp rax, 2
        je pick_hotcold
        # sequential: cursor r10 walks the working set.
        inc r10
        cmp r10, r11
        jb 5f
        xor r10, r10
        inc qword ptr [r14 + S_PASSES]
5:      mov rax, r10
        jmp picked
pick_random:
        call rng_next
        xor edx, edx
        div r11
        mov rax, rdx
        jmp picked
pick_hotcold:
        # 7 of 8 writes go to the hottest eighth of the working set.
        call rng_next
        mov rcx, rax
        and ecx, 7
        shr rax, 8
        xor edx, edx
        cmp ecx, 7
        je 6f
        mov rcx, r11
        shr rcx, 3
        jnz 7f
        mov ecx, 1
7:      div rcx
        mov rax, rdx
        jmp picked
6:      div r11
        mov rax, rdx
picked:
        # page = start + (j * stride) mod count
        mul qword ptr [r15 + C_STRIDE]
        div r12
        lea rdi, [r13 + rdx]
        mov rcx, rdi
        sub rcx, [r15 + C_BASEGFN]
        mov esi, [rbx + rcx*4]
        inc esi
        call stamp
        mov rcx, rdi
        sub rcx, [r15 + C_BASEGFN]
        mov [rbx + rcx*4], esi
        inc qword ptr [r14 + S_WRITTEN]
        mov rcx, [r15 + C_DELAY]
8:      test rcx, rcx
        jz 9f
        dec rcx
        jmp 8b
9:      mov rax, [r14 + S_WRITTEN]
        xor edx, edx
        div qword ptr [r15 + C_INTERVAL]
        test rdx, rdx
        jnz main_loop
        mov eax, ebp
        shl eax, 16
        or eax, EV_PROGRESS
        mov dx, PORT_EVENT
        out dx, eax
        jmp main_loop

# A command from the VMM: C_CMD = 1 verifies every page of this vCPU's share.
handle_cmd:
        push rax
        cmp qword ptr [r15 + C_CMD], 1
        jne cmd_done
        call verify
cmd_done:
        pop rax
        mov [r14 + S_CMDSEQ], rax
        mov eax, ebp
        shl eax, 16
        or eax, EV_CMD_DONE
        mov dx, PORT_EVENT
        out dx, eax
        jmp main_loop

# Checks every page of the share: gfn, version against the table, and the whole content.
# Result in the status block: S_RESULT 0 = ok, else 1 with S_REASON (1 wrong gfn, 2 stale or
# newer version, 3 torn content, 4 lost: page reads as zero), S_BADGFN, S_EXPECT, S_FOUND.
verify:
        push r8
        mov qword ptr [r14 + S_PHASE], 3
        mov qword ptr [r14 + S_RESULT], 0
        mov qword ptr [r14 + S_VERIFIED], 0
        xor r8, r8
10:     cmp r8, r12
        jae 19f
        lea rdi, [r13 + r8]
        mov rcx, rdi
        sub rcx, [r15 + C_BASEGFN]
        mov esi, [rbx + rcx*4]
        mov rcx, rdi
        shl rcx, 12
        mov rax, [rcx]
        cmp rax, rdi
        je 11f
        mov qword ptr [r14 + S_REASON], 1
        mov [r14 + S_EXPECT], rdi
        mov [r14 + S_FOUND], rax
        test rax, rax
        jnz bad
        cmp qword ptr [rcx + 8], 0
        jne bad
        mov qword ptr [r14 + S_REASON], 4
        jmp bad
11:     mov rax, [rcx + 8]
        cmp rax, rsi
        je 12f
        mov qword ptr [r14 + S_REASON], 2
        mov [r14 + S_EXPECT], rsi
        mov [r14 + S_FOUND], rax
        jmp bad
12:     push rcx
        call seed_of
        pop rcx
        mov qword ptr [r14 + S_REASON], 3
        mov [r14 + S_EXPECT], rax
        mov rdx, [rcx + 16]
        mov [r14 + S_FOUND], rdx
        cmp rax, rdx
        jne bad
        mov edx, 3
13:     call xorshift
        cmp rax, [rcx + rdx*8]
        jne 14f
        inc edx
        cmp edx, 512
        jb 13b
        inc r8
        mov [r14 + S_VERIFIED], r8
        jmp 10b
14:     mov [r14 + S_EXPECT], rax
        mov rax, [rcx + rdx*8]
        mov [r14 + S_FOUND], rax
bad:    mov qword ptr [r14 + S_RESULT], 1
        mov [r14 + S_BADGFN], rdi
19:     mov qword ptr [r14 + S_PHASE], 2
        pop r8
        ret

# rax = next value of this vCPU's xorshift generator in r9.
rng_next:
        mov rax, r9
        push rdx
        call xorshift_rax
        pop rdx
        mov r9, rax
        ret

# rax = xorshift64(rax); clobbers nothing else but r8's partner rdx is preserved by callers.
xorshift:
        push rdx
        call xorshift_rax
        pop rdx
        ret
xorshift_rax:
        mov rdx, rax
        shl rdx, 13
        xor rax, rdx
        mov rdx, rax
        shr rdx, 7
        xor rax, rdx
        mov rdx, rax
        shl rdx, 17
        xor rax, rdx
        ret

# rax = seed(rdi = gfn, rsi = version): the page's fill generator start; never zero.
seed_of:
        push rdx
        mov rax, 0x9e3779b97f4a7c15
        imul rax, rdi
        mov rdx, 0xbf58476d1ce4e5b9
        imul rdx, rsi
        add rax, rdx
        mov rdx, rax
        shr rdx, 31
        xor rax, rdx
        pop rdx
        test rax, rax
        jnz 20f
        mov eax, 1
20:     ret

# Writes page rdi with version rsi: [gfn, version, seed, xorshift stream...]. Keeps rdi, rsi.
stamp:
        push rcx
        push rdx
        mov rcx, rdi
        shl rcx, 12
        call seed_of
        mov [rcx], rdi
        mov [rcx + 8], rsi
        mov [rcx + 16], rax
        mov edx, 3
21:     push rdx
        call xorshift_rax
        pop rdx
        mov [rcx + rdx*8], rax
        inc edx
        cmp edx, 512
        jb 21b
        pop rdx
        pop rcx
        ret

# Ring 0. The LAPIC timer: count a tick in this vCPU's status block, whose address the VMM
# stored just above the interrupt frame at the top of this vCPU's ring-0 stack (TSS.RSP0).
        .globl timer_handler
timer_handler:
        push rax
        mov rax, [rsp + 48]
        lock inc qword ptr [rax + S_TICKS]
        mov rax, LAPIC_EOI
        mov dword ptr [rax], 0
        pop rax
        iretq

        .globl spurious_handler
spurious_handler:
        iretq

# Exception stubs: report the vector and stop this vCPU for good.
        .globl fault_stubs
        .balign 16
fault_stubs:
        .set vec, 0
        .rept 32
        .balign 16
        push vec
        jmp fault_common
        .set vec, vec + 1
        .endr
fault_common:
        pop rax
        mov dx, PORT_FAULT
        out dx, eax
22:     cli
        hlt
        jmp 22b
