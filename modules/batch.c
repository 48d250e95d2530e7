/* modules/batch.c: a micro-batch on the host side: checks it against the
 * model's buffers, the vocabulary and the image-slot rule, builds the int index
 * arrays the kernels read (mb_index: positions, token ids, the image-slot splice,
 * the rows with a target, the wte gradient segments, the view sums) in the host
 * mirror, and uploads them to the backend in one copy. Reads only the batch's
 * ints; never a tensor. */
#include <stdlib.h>

#include "common/vlm.h"
#include "modules/model_internal.h"

/* Orders (token id, position) pairs: by id, then by position. */
static int cmp_pair(const void *a, const void *b) {
  const int *x = a, *y = b;
  if (x[0] != y[0]) return x[0] < y[0] ? -1 : 1;
  return (x[1] > y[1]) - (x[1] < y[1]);
}

/* The index arrays (host mirror) derived from the token layout: positions, token
 * ids, the image-slot splice, the rows with a target, the wte gradient segments
 * and the view sums of n_views views. Labels are checked here. */
static int build_index(model *m, const mb_batch *b, int n_views) {
  const monkey_config *c = m->cfg;
  const visual_config *v = &c->visual;
  mb_index *x = &m->hidx;
  const int T = m->seq_start[b->n_samples], V = c->vocab_size;
  m->n_slot = m->n_sel = m->n_emb = 0;
  int n_text = 0;
  for (int t = 0; t < T; t++) {
    x->tokens[t] = b->tokens[t];
    if (m->slot_row[t] >= 0) {
      x->slot_pos[m->n_slot] = t;
      x->slot_src[m->n_slot++] = m->slot_row[t];
    } else {
      m->emb_pairs[2 * n_text] = b->tokens[t];
      m->emb_pairs[2 * n_text + 1] = t;
      n_text++;
    }
  }
  for (int s = 0; s < b->n_samples; s++) {
    m->seq_tail[s] = m->seq_start[s + 1] - m->seq_start[s]; /* no target yet */
    for (int t = m->seq_start[s]; t < m->seq_start[s + 1] - 1; t++)
      if (b->labels[t + 1] != -100) {
        if (b->labels[t + 1] < 0 || b->labels[t + 1] >= V)
          VLM_FAIL("sample %d: label %d at position %d is outside the vocabulary", s,
                   b->labels[t + 1], t + 1 - m->seq_start[s]);
        if (m->seq_tail[s] > t - m->seq_start[s]) m->seq_tail[s] = t - m->seq_start[s];
        x->sel_rows[m->n_sel] = t;
        x->sel_tgt[m->n_sel++] = b->labels[t + 1];
      }
  }
  /* wte gradient: the text positions of each token id, in position order */
  qsort(m->emb_pairs, (size_t)n_text, 2 * sizeof(int), cmp_pair);
  for (int i = 0; i < n_text; i++) {
    if (i == 0 || m->emb_pairs[2 * i] != m->emb_pairs[2 * i - 2]) {
      x->emb_dst[m->n_emb] = m->emb_pairs[2 * i];
      x->emb_seg[m->n_emb++] = i;
    }
    x->emb_src[i] = m->emb_pairs[2 * i + 1];
  }
  x->emb_seg[m->n_emb] = n_text;
  /* view sums: row j of every view, views in order */
  const int NP = v->n_patches, nq = v->n_queries;
  for (int j = 0; j < NP; j++) {
    x->vsum_seg[j] = j * n_views;
    for (int vi = 0; vi < n_views; vi++) x->vsum_rows[j * n_views + vi] = vi * NP + j;
  }
  x->vsum_seg[NP] = NP * n_views;
  const int nr = n_views > 1 ? n_views - 1 : 0; /* views 1.. relative to view 1 */
  for (int j = 0; j < nq; j++) {
    x->qsum_seg[j] = j * nr;
    for (int vi = 0; vi < nr; vi++) x->qsum_rows[j * nr + vi] = vi * nq + j;
  }
  x->qsum_seg[nq] = nq * nr;
  return 0;
}

/* Checks the batch against the buffers and the image-slot rule; fills
 * seq_start, pos_ids and slot_row, builds the index arrays and uploads them. */
int model_prepare_batch(model *m, const mb_batch *b, int *n_images_out) {
  const monkey_config *c = m->cfg;
  const int slots = c->visual.img_slots;
  if (b->n_samples < 1 || b->n_samples > m->max_samples)
    VLM_FAIL("micro-batch of %d samples; the model was set up for 1..%d", b->n_samples, m->max_samples);
  const int nw = c->visual.n_windows, nq = c->visual.n_queries;
  int t = 0, img = 0, n_img = 0;
  for (int s = 0; s < b->n_samples; s++) n_img += b->n_img[s];
  for (int s = 0; s < b->n_samples; s++) {
    m->seq_start[s] = t;
    if (b->len[s] < 1) VLM_FAIL("sample %d of the micro-batch is empty", s);
    if (t + b->len[s] > m->max_tokens)
      VLM_FAIL("micro-batch holds more than %d tokens", m->max_tokens);
    int seen = 0;
    for (int i = 0; i < b->len[s]; i++) {
      m->hidx.pos_ids[t + i] = i;
      m->slot_row[t + i] = -1;
    }
    for (int i = 0; i < b->len[s]; i++) {
      int32_t tok = b->tokens[t + i];
      if (tok < 0 || tok >= c->vocab_size)
        VLM_FAIL("sample %d: token %d at position %d is outside the vocabulary (0..%d)", s, tok, i,
                 c->vocab_size - 1);
      if (tok != c->visual.image_start_id) continue;
      if (i + slots + 1 >= b->len[s] || b->tokens[t + i + slots + 1] != c->img_end_id)
        VLM_FAIL("sample %d: <img> at position %d is not followed by %d slots and </img>", s, i, slots);
      if (seen >= b->n_img[s])
        VLM_FAIL("sample %d: more <img> tags than its %d image(s)", s, b->n_img[s]);
      /* views are stored windows of every image first, then every global view:
       * slot k of image j is query k % nq of view k / nq of that image */
      for (int k = 0; k < slots; k++) {
        int j = img + seen, view = k / nq;
        int vi = view < nw ? j * nw + view : n_img * nw + j;
        m->slot_row[t + i + 1 + k] = vi * nq + k % nq;
      }
      seen++;
      i += slots + 1;
    }
    if (seen != b->n_img[s])
      VLM_FAIL("sample %d: %d <img> tags but %d image(s)", s, seen, b->n_img[s]);
    t += b->len[s];
    img += b->n_img[s];
  }
  m->seq_start[b->n_samples] = t;
  if (img > m->max_images)
    VLM_FAIL("micro-batch holds %d images; the model was set up for %d", img, m->max_images);
  m->n_img = img;
  VLM_CHECK(build_index(m, b, img * (c->visual.n_windows + 1)));
  m->ops->upload(m->idx.pos_ids, m->hidx.pos_ids, m->idx_bytes);
  *n_images_out = img;
  return 0;
}

long mb_count_targets(const mb_batch *b) {
  long n = 0, t = 0;
  for (int s = 0; s < b->n_samples; s++) {
    for (int i = 1; i < b->len[s]; i++) n += b->labels[t + i] != -100;
    t += b->len[s];
  }
  return n;
}
