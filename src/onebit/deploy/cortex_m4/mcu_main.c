/* Harness running an exported model's NAME_predict on a Cortex-M4 under QEMU (mps2-an386),
 * with host files read and written through semihosting (no C library).
 *
 * Built with -DONEBIT_MODEL=NAME '-DONEBIT_HEADER="NAME.h"'. Semihosting command line:
 * `PROGRAM [INPUT [OUTPUT]]` (QEMU's -append "INPUT OUTPUT"; default input.bin output.bin,
 * relative to QEMU's working directory). INPUT holds raw little-endian images of
 * NAME_INPUT_SIZE elements each (uint8, or float32 if NAME_INPUT_IS_U8 is 0); for each, OUTPUT
 * gets NAME_OUTPUT_SIZE float32 values, and the console (QEMU's stderr) a line
 *     onebit: image I instructions N stack S
 * then `onebit: done COUNT`. Exit status: 0, 1 for an I/O error or a truncated image, 2 if an
 * inference outruns the timer's range (about 1.3e9 instructions), 3 on a fault.
 *
 * N counts the instructions NAME_predict executes, from its first through its return (the
 * caller's branch excluded). Under `-icount shift=7` QEMU advances its virtual clock by exactly
 * 2^7 = 128 ns per instruction, and the CMSDK APB timer 0 counts the 25 MHz system clock
 * (40 ns), so K instructions take 3.2 K timer ticks, give or take one tick from where the
 * reads fall: round(ticks / 3.2) recovers K exactly. The same window around an empty function
 * is measured first and subtracted (it executes only its return, added back).
 * S is the stack NAME_predict uses below its caller's stack pointer, in bytes: the free stack
 * is painted before each image and the untouched part found after it (the empty function's
 * use, again, subtracted).
 */
#include <stdint.h>

#include "mcu.h"
#include ONEBIT_HEADER

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define MODEL(suffix) CAT(ONEBIT_MODEL, suffix)

typedef MODEL(_input_t) input_t;
typedef void predict_fn(const input_t *input, float *output);

/* CMSDK APB timer 0 of the mps2 boards: a 32-bit down counter on the system clock. */
#define TIMER_CTRL (*(volatile uint32_t *)0x40000000u)
#define TIMER_VALUE (*(volatile uint32_t *)0x40000004u)
#define TIMER_RELOAD (*(volatile uint32_t *)0x40000008u)
#define TIMER_INT (*(volatile uint32_t *)0x4000000Cu)  /* read: wrapped; write 1: clear */
#define TIMER_ENABLE 1u
#define TIMER_IRQ_ENABLE 8u  /* latches TIMER_INT on a wrap (the NVIC never takes it) */
#define STACK_PAINT 0xC5AC5AC5u

static input_t input[MODEL(_INPUT_SIZE)];
static float output[MODEL(_OUTPUT_SIZE)];

static void print(const char *text) { semihost(SYS_WRITE0, text); }

static void print_uint(uint32_t value)
{
    char digits[11];
    int i = 10;
    digits[i] = '\0';
    do {
        digits[--i] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    print(digits + i);
}

static int fail(const char *message, int status)
{
    print("onebit: ");
    print(message);
    print("\n");
    return status;
}

static void nothing(const input_t *in, float *out) { (void)in; (void)out; }

/* Timer ticks taken by fn(input, output). noipa: the same code times every function. */
__attribute__((noipa)) static uint32_t timed(predict_fn *fn)
{
    uint32_t start = TIMER_VALUE;
    fn(input, output);
    return start - TIMER_VALUE;
}

/* Instructions (see the top comment) and stack bytes of one call, or 0 instructions if the
 * timer wrapped. */
static uint32_t measure(predict_fn *fn, uint32_t *stack)
{
    uint32_t *sp, *p;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    for (p = __stack_limit; p < sp; p++)
        *p = STACK_PAINT;
    TIMER_VALUE = 0xFFFFFFFFu;  /* every call gets the timer's whole range */
    TIMER_INT = 1;
    uint32_t ticks = timed(fn);
    if (TIMER_INT)
        return 0;
    for (p = __stack_limit; p < sp && *p == STACK_PAINT; p++)
        ;
    *stack = (uint32_t)((char *)sp - (char *)p);
    return (uint32_t)(((uint64_t)ticks * 10 + 16) / 32);  /* round(ticks / 3.2) */
}

/* Splits `line` in place into at most `max` space-separated words; returns their count. */
static int split(char *line, const char *words[], int max)
{
    int n = 0;
    for (char *p = line; *p && n < max;) {
        while (*p == ' ')
            p++;
        if (!*p)
            break;
        words[n++] = p;
        while (*p && *p != ' ')
            p++;
        if (*p)
            *p++ = '\0';
    }
    return n;
}

static uint32_t open_file(const char *path, uint32_t mode)
{
    uint32_t length = 0;
    while (path[length])
        length++;
    uint32_t block[3] = {(uint32_t)path, mode, length};
    return semihost(SYS_OPEN, block);
}

int main(void)
{
    static char line[1024];  /* a longer command line is ignored: the defaults apply */
    const char *args[3] = {"", "input.bin", "output.bin"};
    uint32_t cmdline[2] = {(uint32_t)line, sizeof line - 1};
    if (semihost(SYS_GET_CMDLINE, cmdline) == 0)
        split(line, args, 3);
    const char *in_path = args[1], *out_path = args[2];

    uint32_t in = open_file(in_path, OPEN_RB);
    if (in == (uint32_t)-1)
        return fail("cannot open the input file", 1);
    uint32_t out = open_file(out_path, OPEN_WB);
    if (out == (uint32_t)-1)
        return fail("cannot open the output file", 1);

    TIMER_RELOAD = 0xFFFFFFFFu;
    TIMER_VALUE = 0xFFFFFFFFu;
    TIMER_CTRL = TIMER_ENABLE | TIMER_IRQ_ENABLE;
    uint32_t base_stack = 0, stack = 0;
    uint32_t base = measure(nothing, &base_stack) - 1;  /* nothing's only instruction: bx lr */

    uint32_t images = 0;
    for (;;) {
        uint32_t read[3] = {in, (uint32_t)input, sizeof input};
        uint32_t missing = semihost(SYS_READ, read);
        if (missing == sizeof input)
            break;
        if (missing != 0)
            return fail("truncated input: the last image is incomplete", 1);
        uint32_t instructions = measure(MODEL(_predict), &stack);
        if (instructions == 0)
            return fail("an inference outran the timer (about 1.3e9 instructions)", 2);
        uint32_t write[3] = {out, (uint32_t)output, sizeof output};
        if (semihost(SYS_WRITE, write) != 0)
            return fail("cannot write the output file", 1);
        print("onebit: image ");
        print_uint(images++);
        print(" instructions ");
        print_uint(instructions - base);
        print(" stack ");
        print_uint(stack - base_stack);
        print("\n");
    }
    uint32_t close_in[1] = {in}, close_out[1] = {out};
    semihost(SYS_CLOSE, close_in);
    semihost(SYS_CLOSE, close_out);
    print("onebit: done ");
    print_uint(images);
    print("\n");
    return 0;
}
