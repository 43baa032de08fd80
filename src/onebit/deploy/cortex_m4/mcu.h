/* Shared by the Cortex-M4 startup and harness: ARM semihosting and the linker's symbols.
 *
 * Semihosting is a `bkpt 0xab` with the operation in r0 and a pointer to its argument block
 * in r1; the debugger (here QEMU, with -semihosting-config enable=on,target=native) performs
 * it on the host and returns the result in r0. No C library is involved.
 */
#ifndef ONEBIT_MCU_H
#define ONEBIT_MCU_H

#include <stdint.h>

enum {
    SYS_OPEN = 0x01, SYS_CLOSE = 0x02, SYS_WRITE0 = 0x04, SYS_WRITE = 0x05, SYS_READ = 0x06,
    SYS_GET_CMDLINE = 0x15, SYS_EXIT_EXTENDED = 0x20,
};
enum { OPEN_RB = 1, OPEN_WB = 5 };               /* fopen modes "rb" and "wb" */
#define ADP_STOPPED_APPLICATION_EXIT 0x20026u   /* SYS_EXIT reason: the program finished */

static inline uint32_t semihost(uint32_t op, const void *arg)
{
    register uint32_t r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

/* Ends the emulation; QEMU exits with `status`. */
void mcu_exit(int status) __attribute__((noreturn));

/* Stack region of mps2_an386.ld: [__stack_limit, __stack_top). */
extern uint32_t __stack_limit[], __stack_top[];

#endif
