"""LocalClassifier's scoring loop compiled with numba: one pass over a batch, text by text.

The numpy path in ``chainkit.classify`` computes the same scores with whole-batch array
operations; each of those passes over every n-gram of the batch and writes its result to
memory, so a batch costs tens of passes. Here each text is scored in one go while its
n-grams sit in the cache, and ``predict`` and ``predict_many`` share this code, so they agree
to the last bit. Imported only when numba is installed (the ``fast`` extra); without it the
numpy path serves, with the same results to 1e-12.

Layout of the inputs (all built by ``chainkit.classify``): texts are ranges of token
occurrences; an occurrence is a token id, below ``seeded`` a row of the model's token table,
from ``seeded`` up a token this batch analysed itself ("fresh"). Each token has a range of
word ids and of character n-gram ids (ids past the vocabulary: never seen in training, equal
ids for equal n-grams). A word n-gram of length n >= 2 is found by a binary search among the
last words that follow its first n - 1 words (``chainkit.classify._KernelTables``): short runs
that stay in the cache for frequent prefixes.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
from numpy.typing import NDArray

_I = NDArray[np.int64]
_F = NDArray[np.float64]
_F32 = NDArray[np.float32]
_U32 = NDArray[np.uint32]
_B = NDArray[np.bool_]
# Fibonacci hashing's multiplier, as chainkit.classify._Lookup probes its tables.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@nb.njit(cache=True, nogil=True)
def _follow(following: _I, low: int, high: int, word: int) -> int:
    """The position of ``word`` in the sorted ``following[low:high]``, or -1."""
    end = high
    while low < high:
        middle = (low + high) // 2
        if following[middle] < word:
            low = middle + 1
        else:
            high = middle
    if low < end and following[low] == word:
        return low
    return -1


@nb.njit(cache=True, nogil=True)
def fresh_rows(ptr: _I, ids: _I, idf: _F, weights: _F32, scores: _F, mass: _F, unseen: _F) -> None:
    """Class scores, squared tf-idf and unseen count of the tokens a batch analysed itself.

    Computed as the model's token table is (n-grams aggregated, in column order, ``count *
    idf`` each), so that a token scores the same to the last bit whichever table holds it.
    """
    n_tokens = ptr.size - 1
    n_classes = weights.shape[1]
    features = idf.size
    longest = 1
    for token in range(n_tokens):
        longest = max(longest, ptr[token + 1] - ptr[token])
    grams = np.empty(longest, dtype=np.int64)
    for token in range(n_tokens):
        size = ptr[token + 1] - ptr[token]
        for j in range(size):
            grams[j] = ids[ptr[token] + j]
        run = grams[:size]
        _sort(run)
        i = 0
        while i < size:
            j = i + 1
            while j < size and run[j] == run[i]:
                j += 1
            count = j - i
            gram = run[i]
            if gram < features:
                weight = idf[gram]
                value = count * weight
                for c in range(n_classes):
                    scores[token, c] += value * weights[gram, c]
                mass[token] += count * (weight * weight)
            else:
                unseen[token] += count
            i = j


@nb.njit(cache=True, nogil=True)
def _append(ptr: _I, ids: _I, row: int, buffer: _I, at: int) -> int:
    """Copy row ``row`` of a (pointer, ids) table into ``buffer`` from ``at``; the new end."""
    for j in range(ptr[row], ptr[row + 1]):
        buffer[at] = ids[j]
        at += 1
    return at


# Below this many items an insertion sort beats numba's quicksort and its set-up.
_SMALL = 24


@nb.njit(cache=True, nogil=True)
def _sort(values: _I) -> None:
    """Sort in place (a view of a buffer: no allocation for the short arrays of one text)."""
    if values.size > _SMALL:
        values.sort()
        return
    for i in range(1, values.size):
        item = values[i]
        j = i - 1
        while j >= 0 and values[j] > item:
            values[j + 1] = values[j]
            j -= 1
        values[j + 1] = item


@nb.njit(cache=True, nogil=True)
def _dense_ranks(keys: _I, order: _I, out: _I) -> None:
    """Each key's rank among the distinct keys (equal keys, equal ranks); ``order`` is scratch."""
    if keys.size > _SMALL:
        order[:] = np.argsort(keys)
    else:
        for i in range(keys.size):
            item = i
            j = i - 1
            while j >= 0 and keys[order[j]] > keys[item]:
                order[j + 1] = order[j]
                j -= 1
            order[j + 1] = item
    rank = -1
    previous = np.int64(0)
    for i in range(order.size):
        key = keys[order[i]]
        if i == 0 or key != previous:
            rank += 1
            previous = key
        out[order[i]] = rank


# No fastmath: every sum runs in one fixed order with plain multiply and add, as scipy's sparse
# products (which built the token table) do, so a text scores the same in any batch.
@nb.njit(cache=True, nogil=True)
def score_batch(
    text_ptr: _I,
    occurrences: _I,
    seeded: int,
    word_ptr: _I,
    word_ids: _I,
    fresh_word_ptr: _I,
    fresh_word_ids: _I,
    char_ptr: _I,
    char_ids: _I,
    fresh_char_ptr: _I,
    fresh_char_ids: _I,
    fresh_scores: _F,
    fresh_mass: _F,
    fresh_unseen: _F,
    token_scores: _F,
    token_mass: _F,
    vocabulary: int,
    word_low: int,
    word_high: int,
    level_ptr: _I,
    level_ptr_start: _I,
    following: _I,
    following_start: _I,
    columns: _I,
    column_start: _I,
    idf_words: _F,
    idf_chars: _F,
    weights_words: _F32,
    weights_chars: _F32,
    intercept: _F,
    unseen_idf_words: float,
    unseen_idf_chars: float,
    unseen_penalty: float,
    direct: int,
    rejected: int,
    in_scope_power: int,
    out_scores: _F,
    out_temperature: _F,
    out_best: _I,
    out_confidence: _F,
) -> None:
    """Score every text of ``text_ptr``: class scores, temperature, best class, confidence.

    As chainkit.classify's numpy path (``_chunk_scores`` and ``_top``) computes them; class
    ``rejected`` (the out-of-scope class, or -1) lowers the other classes' confidence.
    """
    n_texts = text_ptr.size - 1
    n_classes = intercept.size
    char_features = idf_chars.size
    word_scores = np.empty(n_classes)
    char_scores = np.empty(n_classes)
    # Buffers for the longest text, allocated once.
    most_words = 0
    most_grams = 0
    for text in range(n_texts):
        n_words = 0
        n_grams = 0
        for k in range(text_ptr[text], text_ptr[text + 1]):
            token = occurrences[k]
            if token < seeded:
                n_words += word_ptr[token + 1] - word_ptr[token]
                n_grams += char_ptr[token + 1] - char_ptr[token]
            else:
                fresh = token - seeded
                n_words += fresh_word_ptr[fresh + 1] - fresh_word_ptr[fresh]
                n_grams += fresh_char_ptr[fresh + 1] - fresh_char_ptr[fresh]
        most_words = max(most_words, n_words)
        most_grams = max(most_grams, n_grams)
    word_buffer = np.empty(most_words, dtype=np.int64)
    gram_buffer = np.empty(most_grams, dtype=np.int64)
    known_buffer = np.empty(most_words, dtype=np.int64)  # id at this level, -1 if never seen
    identity_buffer = np.empty(most_words, dtype=np.int64)  # equal n-grams, equal identity
    key_buffer = np.empty(most_words, dtype=np.int64)
    order_buffer = np.empty(most_words, dtype=np.int64)
    levels = word_high - word_low + 1
    # A text's n-grams are counted in a small hash set of its own (the slots of an n-gram
    # hold the text's number, so nothing is cleared between texts): a table over the whole
    # vocabulary would cost a cache miss per n-gram and a fill per batch.
    set_size = 16
    while set_size < 2 * most_grams:
        set_size *= 2
    set_text = np.full(set_size, -1, dtype=np.int64)
    set_gram = np.empty(set_size, dtype=np.int64)
    set_index = np.empty(set_size, dtype=np.int64)
    gram_count = np.empty(most_grams, dtype=np.int64)
    entry_buffer = np.empty(most_words * levels, dtype=np.int64)
    unseen_buffer = np.empty(most_words * levels, dtype=np.int64)
    for text in range(n_texts):
        first, last = text_ptr[text], text_ptr[text + 1]
        w = 0
        g = 0
        for c in range(n_classes):
            char_scores[c] = 0.0
            word_scores[c] = 0.0
        char_mass = 0.0
        char_unseen = 0.0
        for k in range(first, last):
            token = occurrences[k]
            if token < seeded:
                w = _append(word_ptr, word_ids, token, word_buffer, w)
                g = _append(char_ptr, char_ids, token, gram_buffer, g)
                # The token's n-grams, counted linearly, tabled ahead.
                for c in range(n_classes):
                    char_scores[c] += token_scores[token, c]
                char_mass += token_mass[token]
            else:
                fresh = token - seeded
                w = _append(fresh_word_ptr, fresh_word_ids, fresh, word_buffer, w)
                g = _append(fresh_char_ptr, fresh_char_ids, fresh, gram_buffer, g)
                for c in range(n_classes):
                    char_scores[c] += fresh_scores[fresh, c]
                char_mass += fresh_mass[fresh]
                char_unseen += fresh_unseen[fresh]
        n_words = w
        words = word_buffer[:n_words]
        # Where an n-gram occurs more than once, 1 + log(count) replaces count.
        distinct = 0
        bits = 4
        while (1 << bits) < 2 * g:
            bits += 1
        mask = (1 << bits) - 1
        shift = np.uint64(64 - bits)
        for i in range(g):
            gram = gram_buffer[i]
            slot = np.int64((np.uint64(gram) * _GOLDEN) >> shift)
            while set_text[slot] == text and set_gram[slot] != gram:
                slot = (slot + 1) & mask
            if set_text[slot] != text:
                set_text[slot] = text
                set_gram[slot] = gram
                set_index[slot] = distinct
                gram_buffer[distinct] = gram  # distinct <= i: the slot was read already
                gram_count[distinct] = 1
                distinct += 1
            else:
                gram_count[set_index[slot]] += 1
        heaviest = 0
        for i in range(distinct):
            heaviest = max(heaviest, gram_count[i])
        if heaviest > direct:
            # Counting an n-gram 5,000 times and taking back all but 1 + log(5,000) of it
            # loses digits: such a text is summed n-gram by n-gram instead.
            for c in range(n_classes):
                char_scores[c] = 0.0
            char_mass = 0.0
            char_unseen = 0.0
        for i in range(distinct):
            gram = gram_buffer[i]
            count = gram_count[i]
            if heaviest > direct:
                tf = 1.0 + math.log(count)
                if gram < char_features:
                    value = tf * idf_chars[gram]
                    for c in range(n_classes):
                        char_scores[c] += value * weights_chars[gram, c]
                    char_mass += value * value
                else:
                    char_unseen += tf * tf
            elif count > 1:
                tf = 1.0 + math.log(count)
                if gram < char_features:
                    value = idf_chars[gram]
                    change = (tf - count) * value
                    for c in range(n_classes):
                        char_scores[c] += change * weights_chars[gram, c]
                    char_mass += (tf * tf - count) * value * value
                else:
                    char_unseen += tf * tf - count
        char_unseen *= unseen_idf_chars * unseen_idf_chars
        # Word n-grams, level by level: an n-gram is (its first n-1 words, its last word).
        known = known_buffer[:n_words]
        identity = identity_buffer[:n_words]
        keys = key_buffer[:n_words]
        entries = entry_buffer
        unseen_ids = unseen_buffer
        n_entries = 0
        n_unseen = 0
        word_mass = 0.0
        word_unseen = 0.0
        span = np.int64(1)
        for p in range(n_words):
            known[p] = words[p] if words[p] < vocabulary else -1
            if words[p] + 1 > span:
                span = words[p] + 1
        if n_words:
            _dense_ranks(words, order_buffer[:n_words], identity)
        for n in range(1, word_high + 1):
            if n > 1:
                # Positions n-1.. of this text end an n-gram; walk right to left so that
                # known[p - 1] and identity[p - 1] still hold level n - 1.
                for p in range(n_words - 1, n - 2, -1):
                    previous = known[p - 1]
                    word = words[p]
                    found = -1
                    if previous >= 0 and word < vocabulary:
                        # Level n's n-grams sorted by (first n-1 words, last word): those
                        # that extend ``previous`` are one run; the rank is the position.
                        row = level_ptr_start[n - 2] + previous
                        base = following_start[n - 2]
                        found = _follow(
                            following,
                            base + level_ptr[row],
                            base + level_ptr[row + 1],
                            word,
                        )
                        if found >= 0:
                            found -= base
                    known[p] = found
                    keys[p] = identity[p - 1] * span + word
                if n_words >= n:
                    _dense_ranks(
                        keys[n - 1 : n_words],
                        order_buffer[: n_words - n + 1],
                        identity[n - 1 : n_words],
                    )
            if n < word_low:
                continue
            for p in range(n - 1, n_words):
                if known[p] >= 0:
                    column = columns[column_start[n - 1] + known[p]]
                    entries[n_entries] = column
                    n_entries += 1
                else:
                    # Unseen: told apart by (level, identity at that level).
                    unseen_ids[n_unseen] = n * (n_words + 1) + identity[p]
                    n_unseen += 1
        chosen = entries[:n_entries]
        _sort(chosen)
        i = 0
        while i < n_entries:
            j = i + 1
            while j < n_entries and chosen[j] == chosen[i]:
                j += 1
            tf = 1.0 + math.log(j - i)
            column = chosen[i]
            value = tf * idf_words[column]
            for c in range(n_classes):
                word_scores[c] += value * weights_words[column, c]
            word_mass += value * value
            i = j
        others = unseen_ids[:n_unseen]
        _sort(others)
        # Unseen n-grams' ids depend on the batch (new words are numbered as they come): their
        # counts are summed in count order, so that a text's sum is the same in any batch.
        i = 0
        groups = 0
        while i < n_unseen:
            j = i + 1
            while j < n_unseen and others[j] == others[i]:
                j += 1
            others[groups] = j - i  # groups <= i: the slot was read already
            groups += 1
            i = j
        counts = others[:groups]
        _sort(counts)
        for i in range(groups):
            tf = 1.0 + math.log(counts[i])
            word_unseen += tf * tf
        word_unseen *= unseen_idf_words * unseen_idf_words
        word_norm = math.sqrt(word_mass) if word_mass > 0.0 else 1.0
        char_norm = math.sqrt(char_mass) if char_mass > 0.0 else 1.0
        for c in range(n_classes):
            out_scores[text, c] = (
                word_scores[c] / word_norm + char_scores[c] / char_norm + intercept[c]
            )
        temperature = 1.0
        if unseen_penalty != 0.0:
            temperature = (
                _coverage(word_mass, word_unseen, char_mass, char_unseen) ** unseen_penalty
            )
        out_temperature[text] = temperature
        # The label comes from the unscaled scores: with a factor of 0 they would all tie.
        best = 0
        for c in range(1, n_classes):
            if out_scores[text, c] > out_scores[text, best]:
                best = c
        top = out_scores[text, best]
        spread = 0.0
        other = 0.0
        for c in range(n_classes):
            e = math.exp((out_scores[text, c] - top) * temperature)
            spread += e
            if c == rejected:
                other = e
        out_best[text] = best
        confidence = 1.0 / spread
        if rejected >= 0 and best != rejected:
            share = (spread - other) / spread
            for _ in range(in_scope_power):
                confidence *= share
        out_confidence[text] = confidence


@nb.njit(cache=True, nogil=True)
def _coverage(word_mass: float, word_unseen: float, char_mass: float, char_unseen: float) -> float:
    """The share of squared tf-idf weight on seen n-grams, averaged over the two blocks."""
    share = 0.0
    blocks = 0
    if word_mass + word_unseen > 0.0:
        share += word_mass / (word_mass + word_unseen)
        blocks += 1
    if char_mass + char_unseen > 0.0:
        share += char_mass / (char_mass + char_unseen)
        blocks += 1
    # A text with no n-grams at all has coverage 0: uniform probabilities.
    return share / blocks if blocks else 0.0


# FNV-1a over 32-bit code points, from a per-process seed, then MurmurHash3's finaliser: FNV's
# low bits depend only on the code points' low bits (code points equal mod 2**16 would share a
# slot), and a text must not be able to choose its n-grams' slots.
_FNV_PRIME = np.uint64(0x100000001B3)


@nb.njit(cache=True, nogil=True)
def _mix(hashed: np.uint64) -> np.uint64:
    hashed ^= hashed >> np.uint64(33)
    hashed *= np.uint64(0xFF51AFD7ED558CCD)
    hashed ^= hashed >> np.uint64(33)
    hashed *= np.uint64(0xC4CEB9FE1A85EC53)
    hashed ^= hashed >> np.uint64(33)
    return hashed


@nb.njit(cache=True, nogil=True)
def _hash(codes: _U32, start: int, end: int, seed: np.uint64) -> np.uint64:
    """The hash of ``codes[start:end]``."""
    hashed = seed
    for i in range(start, end):
        hashed = (hashed ^ np.uint64(codes[i])) * _FNV_PRIME
    return _mix(hashed)


@nb.njit(cache=True, nogil=True)
def _same(codes: _U32, start: int, end: int, other: _U32, other_start: int) -> bool:
    """Whether ``codes[start:end]`` equals ``other`` from ``other_start`` on."""
    i = 0
    while i < end - start and codes[start + i] == other[other_start + i]:
        i += 1
    return i == end - start


@nb.njit(cache=True, nogil=True)
def token_slots(codes: _U32, ptr: _I, seed: np.uint64) -> _I:
    """An open-addressing table of the model's distinct tokens: each slot a row, or -1."""
    count = ptr.size - 1
    size = 16
    while size < 2 * count:  # at most half full: short probe runs
        size *= 2
    mask = size - 1
    slots = np.full(size, -1, dtype=np.int64)
    for row in range(count):
        slot = np.int64(_hash(codes, ptr[row], ptr[row + 1], seed) & np.uint64(mask))
        while slots[slot] >= 0:
            slot = (slot + 1) & mask
        slots[slot] = row
    return slots


@nb.njit(cache=True, nogil=True)
def find_tokens(
    codes: _U32,
    text_ptr: _I,
    space: _B,
    table: _U32,
    table_ptr: _I,
    slots: _I,
    seed: np.uint64,
) -> tuple[_I, _I, _I, _I]:
    """Split texts at whitespace (``str.split()``'s) and look each token up in the model's table.

    Returns (each text's first token, token rows or -1 for a token the table lacks, each
    token's start and end in ``codes``).
    """
    n_texts = text_ptr.size - 1
    bound = (codes.size + n_texts) // 2 + 1  # a token and a separator take two code points
    ids = np.empty(bound, dtype=np.int64)
    starts = np.empty(bound, dtype=np.int64)
    ends = np.empty(bound, dtype=np.int64)
    token_ptr = np.zeros(n_texts + 1, dtype=np.int64)
    mask = slots.size - 1
    n_spaces = space.size
    count = 0
    for text in range(n_texts):
        i = text_ptr[text]
        end = text_ptr[text + 1]
        while i < end:
            code = codes[i]
            if code < n_spaces and space[code]:
                i += 1
                continue
            start = i
            hashed = seed
            while i < end:
                code = codes[i]
                if code < n_spaces and space[code]:
                    break
                hashed = (hashed ^ np.uint64(code)) * _FNV_PRIME
                i += 1
            row = -1
            slot = np.int64(_mix(hashed) & np.uint64(mask))
            while slots[slot] >= 0:
                held = slots[slot]
                first = table_ptr[held]
                if table_ptr[held + 1] - first == i - start and _same(
                    codes, start, i, table, first
                ):
                    row = held
                    break
                slot = (slot + 1) & mask
            ids[count] = row
            starts[count] = start
            ends[count] = i
            count += 1
        token_ptr[text + 1] = count
    return token_ptr, ids[:count], starts[:count], ends[:count]


@nb.njit(cache=True, nogil=True)
def char_ids(
    codes: _U32,
    starts: _I,
    lengths: _I,
    digit_of: NDArray[np.int32],
    base: int,
    key_pairs: _I,
    shift: np.uint64,
    low: int,
    high: int,
    known: int,
    seed: np.uint64,
) -> tuple[_I, _I]:
    """The ``char_wb`` n-grams of padded tokens as (pointer, ids), as ``_char_ids`` finds them.

    Token t is ``codes[starts[t]:starts[t] + lengths[t]]``, spaces included. Known n-grams
    (every character in the alphabet, the key in the table) get their column; the others ids
    from ``known`` up in order of first appearance, equal n-grams equal ids.
    """
    count = starts.size
    ptr = np.zeros(count + 1, dtype=np.int64)
    for t in range(count):
        size = lengths[t]
        grams = 0
        for n in range(low, high + 1):
            if size <= n:  # a short token is one n-gram, itself
                grams += 1
                break
            grams += size - n + 1
        ptr[t + 1] = ptr[t] + grams
    total = ptr[count]
    ids = np.empty(total, dtype=np.int64)
    # The batch's unseen n-grams, by id - known: where the first one starts, its length; and
    # a hash table of them (slot -> id - known, or -1), doubled whenever half full.
    unseen_start = np.empty(total, dtype=np.int64)
    unseen_width = np.empty(total, dtype=np.int64)
    unseen_mask = 1023
    unseen = np.full(unseen_mask + 1, -1, dtype=np.int64)
    next_id = known
    key_mask = key_pairs.shape[0] - 1
    n_digits = digit_of.size
    at = 0
    for t in range(count):
        first = starts[t]
        size = lengths[t]
        for n in range(low, high + 1):
            width = min(n, size)
            for i in range(first, first + size - width + 1):
                key = np.int64(0)
                plain = True
                for k in range(width):
                    code = codes[i + k]
                    digit = digit_of[code] if code < n_digits else 0
                    if digit == 0:
                        plain = False
                    key = key * base + digit
                column = -1
                if plain:
                    slot = np.int64((np.uint64(key) * _GOLDEN) >> shift)
                    while key_pairs[slot, 0] >= 0:
                        if key_pairs[slot, 0] == key:
                            column = key_pairs[slot, 1]
                            break
                        slot = (slot + 1) & key_mask
                if column < 0:
                    slot = np.int64(_hash(codes, i, i + width, seed) & np.uint64(unseen_mask))
                    while unseen[slot] >= 0:
                        held = unseen[slot]
                        if unseen_width[held] == width and _same(
                            codes, i, i + width, codes, unseen_start[held]
                        ):
                            column = known + held
                            break
                        slot = (slot + 1) & unseen_mask
                    if column < 0:
                        held = next_id - known
                        column = next_id
                        next_id += 1
                        unseen[slot] = held
                        unseen_start[held] = i
                        unseen_width[held] = width
                        if 2 * (held + 1) > unseen_mask:
                            unseen_mask = 2 * unseen_mask + 1
                            unseen = _rehash(
                                codes, unseen_start, unseen_width, held + 1, unseen_mask, seed
                            )
                ids[at] = column
                at += 1
            if size <= n:
                break
    return ptr, ids


@nb.njit(cache=True, nogil=True)
def _rehash(codes: _U32, starts: _I, widths: _I, count: int, mask: int, seed: np.uint64) -> _I:
    """A hash table of ``mask + 1`` slots holding n-grams 0..count-1 (``char_ids``' unseen)."""
    table = np.full(mask + 1, -1, dtype=np.int64)
    for held in range(count):
        slot = np.int64(
            _hash(codes, starts[held], starts[held] + widths[held], seed) & np.uint64(mask)
        )
        while table[slot] >= 0:
            slot = (slot + 1) & mask
        table[slot] = held
    return table
