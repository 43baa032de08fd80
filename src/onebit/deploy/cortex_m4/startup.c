/* Minimal startup for a Cortex-M4F on QEMU's mps2-an386 board (no vendor SDK, no C library).
 *
 * Reset: enable the FPU (CPACR) before any floating-point instruction can run, copy .data from
 * flash to RAM, zero .bss, call main() and end the emulation with its return value through
 * semihosting. A fault ends it with status 3, after moving the stack pointer back to the top
 * (the fault may be a stack overflow). Also defines memcpy, memmove and memset, which GCC may
 * call even in freestanding code (this file is built with -fno-tree-loop-distribute-patterns
 * so that their loops do not become calls to themselves).
 */
#include <stddef.h>
#include <stdint.h>

#include "mcu.h"

extern uint32_t __data_load[], __data_start[], __data_end[], __bss_start[], __bss_end[];
int main(void);
void Reset_Handler(void);
void reset_c(void) __attribute__((noreturn, used));

void mcu_exit(int status)
{
    static uint32_t block[2] = {ADP_STOPPED_APPLICATION_EXIT, 0};
    block[1] = (uint32_t)status;
    for (;;)
        semihost(SYS_EXIT_EXTENDED, block);
}

void fault_c(void) __attribute__((noreturn, used));
void fault_c(void)
{
    semihost(SYS_WRITE0, "onebit: fault (hard fault, bus fault or stack overflow)\n");
    mcu_exit(3);
}

/* A fault may come from a stack overflow: start over from the top of the stack. */
__attribute__((naked)) static void fault_handler(void)
{
    __asm__ volatile(
        "ldr r0, =__stack_top\n"
        "mov sp, r0\n"
        "b fault_c\n");
}

/* Initial stack pointer, then the 15 system exceptions (no device interrupts are used). */
__attribute__((section(".vectors"), used)) static const uintptr_t vectors[16] = {
    (uintptr_t)__stack_top, (uintptr_t)Reset_Handler,
    (uintptr_t)fault_handler, (uintptr_t)fault_handler, (uintptr_t)fault_handler,
    (uintptr_t)fault_handler, (uintptr_t)fault_handler, 0, 0, 0, 0,
    (uintptr_t)fault_handler, (uintptr_t)fault_handler, 0,
    (uintptr_t)fault_handler, (uintptr_t)fault_handler,
};

/* Naked so that no compiler-generated code (which may use FP registers) precedes the FPU
 * enable: CPACR.CP10 and CP11 = full access. */
__attribute__((naked)) void Reset_Handler(void)
{
    __asm__ volatile(
        "ldr r0, =0xE000ED88\n"
        "ldr r1, [r0]\n"
        "orr r1, r1, #(0xF << 20)\n"
        "str r1, [r0]\n"
        "dsb\n"
        "isb\n"
        "b reset_c\n");
}

void reset_c(void)
{
    for (uint32_t *src = __data_load, *dst = __data_start; dst < __data_end;)
        *dst++ = *src++;
    for (uint32_t *dst = __bss_start; dst < __bss_end;)
        *dst++ = 0;
    mcu_exit(main());
}

void *memcpy(void *restrict dst, const void *restrict src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    if (d < s)
        while (n--)
            *d++ = *s++;
    else
        while (n--)
            d[n] = s[n];
    return dst;
}

void *memset(void *dst, int c, size_t n)
{
    unsigned char *d = dst;
    while (n--)
        *d++ = (unsigned char)c;
    return dst;
}
