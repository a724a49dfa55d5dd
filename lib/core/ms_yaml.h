/*
 * ms_yaml.h - a YAML document as a small tree, for the worker's rule files
 * (worker/shaping.h, worker/classify.h).  The only file that includes
 * libyaml (STYLE.md 1): callers walk plain structs.
 *
 * The tree holds scalars (as text: "10", "yes" and "a b" alike; the caller
 * decides what a value means), sequences and mappings (keys are scalars),
 * each with the line it started on, for error messages.  Anchors and
 * aliases are refused (a rule file has no use for them, and an alias bomb
 * would multiply the tree), so are more documents than one, and input past
 * the limits below.
 *
 * Ownership: ms_yaml_load() returns a tree the caller frees with
 * ms_yaml_free().  Errors: MS_EINVAL (not YAML, or refused: the message
 * in err says where and why), MS_ETOOBIG (a limit), MS_EIO (the file).
 * Pure apart from reading the file; any thread.
 */
#ifndef MS_YAML_H
#define MS_YAML_H

#include <stddef.h>

/* Largest rule file read. */
#define MS_YAML_FILE_MAX (1024 * 1024)
/* Most nodes in one document, and the deepest nesting. */
#define MS_YAML_NODES_MAX 100000
#define MS_YAML_DEPTH_MAX 32

enum ms_yaml_kind { MS_YAML_SCALAR, MS_YAML_SEQ, MS_YAML_MAP };

struct ms_yaml_node {
    enum ms_yaml_kind kind;
    int line;                    /* 1-based */
    char *str;                   /* SCALAR: NUL-terminated text */
    size_t len;                  /* SCALAR: its length (it may hold NULs) */
    struct ms_yaml_node **items; /* SEQ: the items; MAP: key, value, key, value ... */
    size_t n;                    /* entries of items */
};

/* Parse buf (len bytes).  An empty document is an empty mapping. */
int ms_yaml_parse(const char *buf, size_t len, struct ms_yaml_node **out, char *err,
                  size_t errlen);
/* Read and parse the file at path. */
int ms_yaml_load(const char *path, struct ms_yaml_node **out, char *err, size_t errlen);
void ms_yaml_free(struct ms_yaml_node *n);

/* The value of `key` in mapping m (NULL: m is not a mapping or has no such
 * key). */
const struct ms_yaml_node *ms_yaml_get(const struct ms_yaml_node *m, const char *key);

/* Every key of mapping m is one of keys (NULL-terminated): 0, or
 * MS_EINVAL naming the first unknown one and its line in err. */
int ms_yaml_check_keys(const struct ms_yaml_node *m, const char *const *keys, char *err,
                       size_t errlen);

#endif
