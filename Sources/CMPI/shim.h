#define _GNU_SOURCE
#include <sched.h>
#include <mpi.h>
/* Open MPI's handles (MPI_COMM_WORLD, MPI_FLOAT, MPI_SUM, ...) are macros over addresses of library
   globals, which Swift cannot import; these wrappers name each one the Distributed module uses. */

static inline MPI_Comm mae_mpi_comm_world(void) { return MPI_COMM_WORLD; }

/* MPI_Init_thread with MPI_THREAD_FUNNELED (only the main thread calls MPI), then errors on the world
   communicator return codes instead of aborting. Returns an MPI error code. */
static inline int mae_mpi_init(void) {
    int provided = 0;
    int code = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
    if (code != MPI_SUCCESS) return code;
    return MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
}

static inline int mae_mpi_rank(int *rank) { return MPI_Comm_rank(MPI_COMM_WORLD, rank); }
static inline int mae_mpi_size(int *size) { return MPI_Comm_size(MPI_COMM_WORLD, size); }

/* In-place sums over the world. */
static inline int mae_mpi_allreduce_sum_float(float *values, int count) {
    return MPI_Allreduce(MPI_IN_PLACE, values, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
}
static inline int mae_mpi_allreduce_sum_double(double *values, int count) {
    return MPI_Allreduce(MPI_IN_PLACE, values, count, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
}

/* Every rank's `count` ints, in rank order, into `all` (size x count). */
static inline int mae_mpi_allgather_int(const int *mine, int count, int *all) {
    return MPI_Allgather(mine, count, MPI_INT, all, count, MPI_INT, MPI_COMM_WORLD);
}

/* Every rank's bytes concatenated in rank order; counts[r] bytes from rank r at displacements[r]. */
static inline int mae_mpi_allgatherv_bytes(const void *mine, int count, void *all, const int *counts,
                                           const int *displacements) {
    return MPI_Allgatherv(mine, count, MPI_BYTE, all, counts, displacements, MPI_BYTE, MPI_COMM_WORLD);
}

static inline int mae_mpi_broadcast_bytes(void *bytes, int count, int root) {
    return MPI_Bcast(bytes, count, MPI_BYTE, root, MPI_COMM_WORLD);
}

static inline int mae_mpi_barrier(void) { return MPI_Barrier(MPI_COMM_WORLD); }
static inline int mae_mpi_finalize(void) { return MPI_Finalize(); }
static inline void mae_mpi_abort(int code) { MPI_Abort(MPI_COMM_WORLD, code); }
static inline int mae_mpi_success(void) { return MPI_SUCCESS; }
static inline int mae_mpi_max_error_string(void) { return MPI_MAX_ERROR_STRING; }
static inline int mae_mpi_error_string(int code, char *text, int *length) { return MPI_Error_string(code, text, length); }

/* Ranks of the world that share this node's memory (MPI_COMM_TYPE_SHARED), or -1 on an error. */
static inline int mae_mpi_local_size(void) {
    MPI_Comm local;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local) != MPI_SUCCESS) return -1;
    int size = -1;
    MPI_Comm_size(local, &size);
    MPI_Comm_free(&local);
    return size;
}

/* Cores this process may run on (its affinity mask: a launcher binding ranks to cores narrows it), 0 if unknown. */
static inline int mae_affinity_cores(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) != 0) return 0;
    return CPU_COUNT(&set);
}
