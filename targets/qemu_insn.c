/* edgepipe instruction counter: a qemu-user TCG plugin (plugin API version 1, Debian's dynamic qemu 7.2) that
 * counts guest instructions between two marker syscalls and appends one count per marked region to a file.
 *
 * The agent marks each timed inference with lseek(fd of /dev/null, MARK_START, SEEK_SET) before and
 * lseek(..., MARK_STOP, ...) after: on /dev/null both succeed and return 0 (no exception to handle inside the
 * counted region), and the plugin sees them at syscall entry. Counting is an inline add per translated block (no
 * helper call), so emulation stays almost as fast as without the plugin.
 *
 * Arguments (-plugin libedgepipe_insn.so,out=FILE,lseek=NR): out = the file that receives one decimal count per
 * line (appended, flushed per line so a killed run keeps what it counted); lseek = the guest's lseek syscall
 * number (62 on aarch64, 8 on x86_64).
 *
 * Only the declarations this file uses are written out below: the API is a stable C ABI, so no qemu header is
 * needed to build it (gcc -O2 -shared -fPIC).
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t; /* not read here */
struct qemu_plugin_tb;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 = 0 };

typedef void (*tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*syscall_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num, uint64_t a1, uint64_t a2,
                             uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8);
typedef void (*udata_cb_t)(qemu_plugin_id_t id, void *userdata);

extern void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, tb_trans_cb_t cb);
extern size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
extern void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op, void *ptr,
                                                     uint64_t imm);
extern void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t id, syscall_cb_t cb);
extern void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, udata_cb_t cb, void *userdata);

EXPORT int qemu_plugin_version = 1;

/* "EDGEPIPE" in ASCII, low byte 1 = start, 2 = stop: an offset no runtime seeks to */
#define MARK_START 0x4544474550495001ULL
#define MARK_STOP 0x4544474550495002ULL

static uint64_t executed;      /* guest instructions executed so far (all threads) */
static uint64_t region_start;
static int in_region;
static int64_t lseek_nr = -1;
static FILE *out;

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &executed, qemu_plugin_tb_n_insns(tb));
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num, uint64_t a1, uint64_t a2,
                       uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8)
{
    (void)id; (void)vcpu_index; (void)a1; (void)a3; (void)a4; (void)a5; (void)a6; (void)a7; (void)a8;
    if (num != lseek_nr) {
        return;
    }
    if (a2 == MARK_START) {
        region_start = executed;
        in_region = 1;
    } else if (a2 == MARK_STOP && in_region) {
        in_region = 0;
        fprintf(out, "%" PRIu64 "\n", executed - region_start);
        fflush(out);
    }
}

static void on_plugin_exit(qemu_plugin_id_t id, void *userdata)
{
    (void)id; (void)userdata;
    if (out) {
        fclose(out);
        out = NULL;
    }
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    const char *path = NULL;
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            path = argv[i] + 4;
        } else if (strncmp(argv[i], "lseek=", 6) == 0) {
            lseek_nr = strtoll(argv[i] + 6, NULL, 10);
        } else {
            fprintf(stderr, "edgepipe_insn: unknown argument %s (expected out=FILE, lseek=NR)\n", argv[i]);
            return -1;
        }
    }
    if (path == NULL || lseek_nr < 0) {
        fprintf(stderr, "edgepipe_insn: needs out=FILE and lseek=NR\n");
        return -1;
    }
    out = fopen(path, "a");
    if (out == NULL) {
        fprintf(stderr, "edgepipe_insn: cannot open %s\n", path);
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_atexit_cb(id, on_plugin_exit, NULL);
    return 0;
}
