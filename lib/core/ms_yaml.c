/*
 * ms_yaml.c - YAML documents as trees, through libyaml's event parser
 * (ms_yaml.h).
 */
#include "ms_yaml.h"
#include "ms_error.h"
#include "ms_mem.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

struct loader {
    yaml_parser_t p;
    size_t nodes;
    char *err;
    size_t errlen;
};

void ms_yaml_free(struct ms_yaml_node *n)
{
    size_t i;

    if (n == NULL)
        return;
    for (i = 0; i < n->n; i++)
        ms_yaml_free(n->items[i]);
    free(n->items);
    free(n->str);
    free(n);
}

static int fail(struct loader *l, int line, const char *what)
{
    snprintf(l->err, l->errlen, "line %d: %s", line, what);
    return MS_EINVAL;
}

static struct ms_yaml_node *node_new(enum ms_yaml_kind k, int line)
{
    struct ms_yaml_node *n = ms_calloc(1, sizeof(*n));

    n->kind = k;
    n->line = line;
    return n;
}

static void node_push(struct ms_yaml_node *parent, struct ms_yaml_node *child)
{
    parent->items = ms_realloc(parent->items, (parent->n + 1) * sizeof(*parent->items));
    parent->items[parent->n++] = child;
}

/* Read the node that starts with event ev (already taken) into *out. */
static int load_node(struct loader *l, yaml_event_t *ev, int depth, struct ms_yaml_node **out)
{
    int line = (int)ev->start_mark.line + 1, err;
    struct ms_yaml_node *n;
    yaml_event_t next;

    if (++l->nodes > MS_YAML_NODES_MAX) {
        snprintf(l->err, l->errlen, "line %d: more than %d nodes", line, MS_YAML_NODES_MAX);
        return MS_ETOOBIG;
    }
    if (depth > MS_YAML_DEPTH_MAX)
        return fail(l, line, "nested too deeply");
    switch (ev->type) {
    case YAML_ALIAS_EVENT:
        return fail(l, line, "aliases are not supported");
    case YAML_SCALAR_EVENT:
        if (ev->data.scalar.anchor)
            return fail(l, line, "anchors are not supported");
        n = node_new(MS_YAML_SCALAR, line);
        n->len = ev->data.scalar.length;
        n->str = ms_strndup((const char *)ev->data.scalar.value, n->len);
        *out = n;
        return 0;
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT:
        if (ev->type == YAML_SEQUENCE_START_EVENT ? ev->data.sequence_start.anchor != NULL
                                                  : ev->data.mapping_start.anchor != NULL)
            return fail(l, line, "anchors are not supported");
        n = node_new(ev->type == YAML_SEQUENCE_START_EVENT ? MS_YAML_SEQ : MS_YAML_MAP, line);
        for (;;) {
            struct ms_yaml_node *child = NULL;
            if (!yaml_parser_parse(&l->p, &next)) {
                ms_yaml_free(n);
                return fail(l, (int)l->p.problem_mark.line + 1,
                            l->p.problem ? l->p.problem : "not YAML");
            }
            if (next.type == YAML_SEQUENCE_END_EVENT || next.type == YAML_MAPPING_END_EVENT) {
                yaml_event_delete(&next);
                break;
            }
            err = load_node(l, &next, depth + 1, &child);
            yaml_event_delete(&next);
            if (err < 0) {
                ms_yaml_free(n);
                return err;
            }
            if (n->kind == MS_YAML_MAP && n->n % 2 == 0 && child->kind != MS_YAML_SCALAR) {
                ms_yaml_free(child);
                ms_yaml_free(n);
                return fail(l, line, "mapping keys must be scalars");
            }
            node_push(n, child);
        }
        *out = n;
        return 0;
    default:
        return fail(l, line, "unexpected YAML event");
    }
}

int ms_yaml_parse(const char *buf, size_t len, struct ms_yaml_node **out, char *err,
                  size_t errlen)
{
    struct loader l;
    yaml_event_t ev;
    struct ms_yaml_node *root = NULL;
    int rc = 0, done = 0;

    *out = NULL;
    if (len > MS_YAML_FILE_MAX) {
        snprintf(err, errlen, "larger than %d bytes", MS_YAML_FILE_MAX);
        return MS_ETOOBIG;
    }
    memset(&l, 0, sizeof(l));
    l.err = err;
    l.errlen = errlen;
    if (!yaml_parser_initialize(&l.p))
        return MS_ENOMEM;
    yaml_parser_set_input_string(&l.p, (const unsigned char *)buf, len);
    while (!done && rc == 0) {
        if (!yaml_parser_parse(&l.p, &ev)) {
            rc = fail(&l, (int)l.p.problem_mark.line + 1, l.p.problem ? l.p.problem : "not YAML");
            break;
        }
        switch (ev.type) {
        case YAML_STREAM_END_EVENT:
            done = 1;
            break;
        case YAML_STREAM_START_EVENT:
        case YAML_DOCUMENT_END_EVENT:
            break;
        case YAML_DOCUMENT_START_EVENT:
            if (root != NULL)
                rc = fail(&l, (int)ev.start_mark.line + 1, "one document only");
            break;
        default:
            if (root != NULL)
                rc = fail(&l, (int)ev.start_mark.line + 1, "one document only");
            else
                rc = load_node(&l, &ev, 0, &root);
            break;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&l.p);
    if (rc < 0) {
        ms_yaml_free(root);
        return rc;
    }
    *out = root ? root : node_new(MS_YAML_MAP, 1);
    return 0;
}

int ms_yaml_load(const char *path, struct ms_yaml_node **out, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    size_t n;
    int rc;

    *out = NULL;
    if (f == NULL) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return MS_EIO;
    }
    buf = ms_malloc(MS_YAML_FILE_MAX + 1);
    n = fread(buf, 1, MS_YAML_FILE_MAX + 1, f);
    rc = ferror(f);
    fclose(f);
    if (rc) {
        snprintf(err, errlen, "%s: read error", path);
        free(buf);
        return MS_EIO;
    }
    rc = ms_yaml_parse(buf, n, out, err, errlen);
    free(buf);
    return rc;
}

const struct ms_yaml_node *ms_yaml_get(const struct ms_yaml_node *m, const char *key)
{
    size_t i;

    if (m == NULL || m->kind != MS_YAML_MAP)
        return NULL;
    for (i = 0; i + 1 < m->n; i += 2)
        if (strcmp(m->items[i]->str, key) == 0)
            return m->items[i + 1];
    return NULL;
}

int ms_yaml_check_keys(const struct ms_yaml_node *m, const char *const *keys, char *err,
                       size_t errlen)
{
    size_t i, k;

    for (i = 0; m && m->kind == MS_YAML_MAP && i + 1 < m->n; i += 2) {
        for (k = 0; keys[k] && strcmp(keys[k], m->items[i]->str) != 0; k++)
            ;
        if (keys[k] == NULL) {
            snprintf(err, errlen, "line %d: unknown key \"%.64s\"", m->items[i]->line,
                     m->items[i]->str);
            return MS_EINVAL;
        }
    }
    return 0;
}
