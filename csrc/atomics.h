/* C11 atomics on 64-bit cells of a shared memory segment (tiermux._ext.atomics).
 *
 * The cells live in a file mapped by several processes; every operation is sequentially
 * consistent and lock-free on the platforms tiermux builds on (checked at import). */
#ifndef TIERMUX_ATOMICS_H
#define TIERMUX_ATOMICS_H

#include <stdatomic.h>
#include <stdint.h>

typedef _Atomic int64_t tmx_cell;

static inline int tmx_cells_lock_free(void) { return ATOMIC_LLONG_LOCK_FREE == 2; }

static inline int64_t tmx_load(tmx_cell *cell) { return atomic_load(cell); }

static inline void tmx_store(tmx_cell *cell, int64_t value) { atomic_store(cell, value); }

/* The value after adding. */
static inline int64_t tmx_add(tmx_cell *cell, int64_t delta) { return atomic_fetch_add(cell, delta) + delta; }

static inline int tmx_compare_exchange(tmx_cell *cell, int64_t expected, int64_t desired) {
    return atomic_compare_exchange_strong(cell, &expected, desired);
}

/* Add delta only if the result stays at or below limit; 1 if it did. */
static inline int tmx_add_bounded(tmx_cell *cell, int64_t delta, int64_t limit) {
    int64_t current = atomic_load(cell);
    for (;;) {
        if (current + delta > limit) return 0;
        if (atomic_compare_exchange_weak(cell, &current, current + delta)) return 1;
    }
}

#endif
