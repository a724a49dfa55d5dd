#include "ms_config.h"
#include "ms_error.h"
#include "ms_log.h"
#include "ms_mem.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* One `key = value` line of the file (a continuation line of a multi-line
 * value is an entry of its own, read as the key's last value). */
struct entry {
    char *section;
    char *key;
    char *value;
    int line;
    int asked; /* a lookup named this section and key */
};

struct section {
    char *name;
    int line;  /* of its first [name] header */
    int asked; /* a lookup named this section */
};

/* The answer of ms_config_sections for one prefix, kept so that the names
 * array lives as long as the config. */
struct view {
    char *prefix;
    const char **names;
    size_t n;
};

struct ms_config {
    char *path;
    struct entry *entries;
    size_t n, cap;
    struct section *sections;
    size_t nsections, capsections;
    struct view *views;
    size_t nviews;
    /* Environment values handed out by ms_config_get, kept so they outlive
     * later getenv calls. */
    char **env_values;
    size_t nenv;
};

/* Loading state, handed to inih both as the reader's stream and as the
 * handler's user pointer: inih (Debian's build) tells the handler neither the
 * line number nor where a section starts, so the reader counts lines. */
struct load {
    ms_config *cfg;
    FILE *f;
    int lineno;       /* of the line last handed to inih */
    int section_line; /* of the last [section] header */
    int too_long;     /* the line that did not fit inih's buffer, or 0 */
    int limit;        /* the characters that fit */
};

_Static_assert(MS_CONFIG_LINE_MAX == INI_MAX_LINE - 2, "MS_CONFIG_LINE_MAX follows inih");

static char *read_line(char *str, int num, void *stream)
{
    struct load *ld = stream;
    size_t len;
    const char *p;
    int end;

    if (fgets(str, num, ld->f) == NULL)
        return NULL;
    ld->lineno++;
    len = strlen(str);
    end = len > 0 && str[len - 1] == '\n';
    /* Without its line end a line may be the file's last, or one that the
     * buffer cannot hold (its rest still to come). */
    if (len - (size_t)end > (size_t)num - 2 || (!end && getc(ld->f) != EOF)) {
        ld->too_long = ld->lineno;
        ld->limit = num - 2;
        return NULL; /* inih stops here */
    }
    p = str;
    if (ld->lineno == 1 && strncmp(p, "\xEF\xBB\xBF", 3) == 0)
        p += 3; /* a UTF-8 BOM, which inih skips too */
    while (isspace((unsigned char)*p))
        p++;
    if (*p == '[')
        ld->section_line = ld->lineno;
    return str;
}

static struct section *find_section(const ms_config *cfg, const char *name)
{
    size_t i;

    for (i = 0; i < cfg->nsections; i++)
        if (strcmp(cfg->sections[i].name, name) == 0)
            return &cfg->sections[i];
    return NULL;
}

static int on_entry(void *user, const char *section, const char *key, const char *value)
{
    struct load *ld = user;
    ms_config *cfg = ld->cfg;
    struct entry *e;

    /* inih reports a section with its first key (new-section calls are not
     * compiled into Debian's build): record it then. */
    if (find_section(cfg, section) == NULL) {
        if (cfg->nsections == cfg->capsections) {
            cfg->capsections = cfg->capsections ? cfg->capsections * 2 : 8;
            cfg->sections = ms_realloc(cfg->sections, cfg->capsections * sizeof(*cfg->sections));
        }
        cfg->sections[cfg->nsections++] =
            (struct section){ms_strdup(section), *section ? ld->section_line : ld->lineno, 0};
    }
    if (key == NULL) /* a new section, if inih was built to say so */
        return 1;
    if (cfg->n == cfg->cap) {
        cfg->cap = cfg->cap ? cfg->cap * 2 : 32;
        cfg->entries = ms_realloc(cfg->entries, cfg->cap * sizeof(struct entry));
    }
    e = &cfg->entries[cfg->n++];
    e->section = ms_strdup(section);
    e->key = ms_strdup(key);
    e->value = ms_strdup(value);
    e->line = ld->lineno;
    e->asked = 0;
    return 1;
}

ms_config *ms_config_load(const char *path, char *err, size_t errlen)
{
    ms_config *cfg = ms_calloc(1, sizeof(*cfg));
    struct load ld;
    int r;

    if (path == NULL)
        return cfg;
    cfg->path = ms_strdup(path);
    memset(&ld, 0, sizeof(ld));
    ld.cfg = cfg;
    if ((ld.f = fopen(path, "r")) == NULL) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        ms_config_free(cfg);
        return NULL;
    }
    r = ini_parse_stream(read_line, &ld, on_entry, &ld);
    fclose(ld.f);
    if (r != 0 || ld.too_long) {
        if (r > 0)
            snprintf(err, errlen, "%s:%d: syntax error", path, r);
        else if (ld.too_long)
            snprintf(err, errlen, "%s:%d: line longer than %d characters", path, ld.too_long,
                     ld.limit);
        else
            snprintf(err, errlen, "%s: cannot parse (error %d)", path, r);
        ms_config_free(cfg);
        return NULL;
    }
    return cfg;
}

void ms_config_free(ms_config *cfg)
{
    size_t i;

    if (cfg == NULL)
        return;
    for (i = 0; i < cfg->n; i++) {
        free(cfg->entries[i].section);
        free(cfg->entries[i].key);
        free(cfg->entries[i].value);
    }
    for (i = 0; i < cfg->nsections; i++)
        free(cfg->sections[i].name);
    for (i = 0; i < cfg->nviews; i++) {
        free(cfg->views[i].prefix);
        free(cfg->views[i].names);
    }
    for (i = 0; i < cfg->nenv; i++)
        free(cfg->env_values[i]);
    free(cfg->path);
    free(cfg->entries);
    free(cfg->sections);
    free(cfg->views);
    free(cfg->env_values);
    free(cfg);
}

static void env_name(char *out, size_t outlen, const char *section, const char *key)
{
    size_t o;
    const char *p;

    o = (size_t)snprintf(out, outlen, "MAILSTREAM_");
    for (p = section; *p && o + 2 < outlen; p++)
        out[o++] = isalnum((unsigned char)*p) ? (char)toupper((unsigned char)*p) : '_';
    if (o + 2 < outlen)
        out[o++] = '_';
    for (p = key; *p && o + 1 < outlen; p++)
        out[o++] = isalnum((unsigned char)*p) ? (char)toupper((unsigned char)*p) : '_';
    out[o] = '\0';
}

/* Record that a lookup named [section] key: the section, and every line
 * of the file that sets the key (the last one wins, the others are not
 * typos). */
static void mark_asked(ms_config *cfg, const char *section, const char *key)
{
    struct section *sec = find_section(cfg, section);
    size_t i;

    if (sec == NULL)
        return; /* not in the file: nothing to check */
    sec->asked = 1;
    for (i = 0; i < cfg->n; i++)
        if (strcmp(cfg->entries[i].key, key) == 0 && strcmp(cfg->entries[i].section, section) == 0)
            cfg->entries[i].asked = 1;
}

static const struct entry *last_entry(const ms_config *cfg, const char *section, const char *key)
{
    size_t i;

    /* The last occurrence wins, as in most INI dialects. */
    for (i = cfg->n; i-- > 0;)
        if (strcmp(cfg->entries[i].section, section) == 0 && strcmp(cfg->entries[i].key, key) == 0)
            return &cfg->entries[i];
    return NULL;
}

/* Where the value of [section] key comes from, for error messages: the
 * environment variable's name, "FILE:LINE", or "default". */
static const char *origin(const ms_config *cfg, const char *section, const char *key, char *buf,
                          size_t len)
{
    const struct entry *e;

    env_name(buf, len, section, key);
    if (getenv(buf) != NULL)
        return buf;
    if ((e = last_entry(cfg, section, key)) != NULL) {
        snprintf(buf, len, "%s:%d", cfg->path, e->line);
        return buf;
    }
    return "default";
}

const char *ms_config_get(const ms_config *cfg, const char *section, const char *key,
                          const char *def)
{
    ms_config *mcfg = (ms_config *)cfg;
    const struct entry *e;
    char name[256];
    const char *env;
    size_t i;

    /* Asked for even when the environment overrides it: the key is known. */
    mark_asked(mcfg, section, key);
    env_name(name, sizeof(name), section, key);
    if ((env = getenv(name)) != NULL) {
        for (i = 0; i < mcfg->nenv; i++)
            if (strcmp(mcfg->env_values[i], env) == 0)
                return mcfg->env_values[i];
        mcfg->env_values = ms_realloc(mcfg->env_values, (mcfg->nenv + 1) * sizeof(char *));
        mcfg->env_values[mcfg->nenv] = ms_strdup(env);
        return mcfg->env_values[mcfg->nenv++];
    }
    return (e = last_entry(cfg, section, key)) != NULL ? e->value : def;
}

int ms_config_get_int(const ms_config *cfg, const char *section, const char *key, int64_t def,
                      int64_t min, int64_t max, int64_t *out)
{
    const char *s = ms_config_get(cfg, section, key, NULL);
    char where[512];
    long long v;
    char *end;

    if (s == NULL || *s == '\0') {
        *out = def;
        return 0;
    }
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || end == s)
        goto bad;
    switch (tolower((unsigned char)*end)) {
    case 'k': v *= 1024LL; end++; break;
    case 'm': v *= 1024LL * 1024; end++; break;
    case 'g': v *= 1024LL * 1024 * 1024; end++; break;
    default: break;
    }
    while (isspace((unsigned char)*end))
        end++;
    if (*end != '\0' || v < min || v > max)
        goto bad;
    *out = v;
    return 0;
bad:
    ms_warn("event=config_error origin=%s section=%s key=%s value=\"%s\" "
            "want=\"integer in [%lld, %lld]\"",
            origin(cfg, section, key, where, sizeof(where)), section, key, s, (long long)min,
            (long long)max);
    return MS_ECONFIG;
}

/* The spellings a boolean may take (docs/config.md), compared ignoring case.
 * Nothing else is read as "no": `inbound = ja` is a typo, not a choice. */
static const struct {
    const char *word;
    int value;
} bool_words[] = {
    {"yes", 1}, {"true", 1}, {"1", 1}, {"no", 0}, {"false", 0}, {"0", 0},
};

int ms_config_get_bool(const ms_config *cfg, const char *section, const char *key, int def,
                       int *out, char *err, size_t errlen)
{
    const char *s = ms_config_get(cfg, section, key, NULL);
    char where[512];
    size_t i;

    if (s == NULL || *s == '\0') {
        *out = def;
        return 0;
    }
    for (i = 0; i < sizeof(bool_words) / sizeof(bool_words[0]); i++)
        if (strcasecmp(s, bool_words[i].word) == 0) {
            *out = bool_words[i].value;
            return 0;
        }
    snprintf(err, errlen, "%s: [%s] %s: want yes or no (or true/false, 1/0), not \"%s\"",
             origin(cfg, section, key, where, sizeof(where)), section, key, s);
    return MS_ECONFIG;
}

size_t ms_config_sections(const ms_config *cfg, const char *prefix, const char *const **names)
{
    ms_config *mcfg = (ms_config *)cfg;
    size_t i, plen = strlen(prefix);
    struct view *v;

    for (i = 0; i < mcfg->nviews; i++)
        if (strcmp(mcfg->views[i].prefix, prefix) == 0) {
            *names = mcfg->views[i].names;
            return mcfg->views[i].n;
        }
    mcfg->views = ms_realloc(mcfg->views, (mcfg->nviews + 1) * sizeof(*mcfg->views));
    v = &mcfg->views[mcfg->nviews++];
    v->prefix = ms_strdup(prefix);
    v->names = ms_calloc(mcfg->nsections + 1, sizeof(char *));
    v->n = 0;
    for (i = 0; i < mcfg->nsections; i++)
        if (strncmp(mcfg->sections[i].name, prefix, plen) == 0)
            v->names[v->n++] = mcfg->sections[i].name;
    *names = v->names;
    return v->n;
}

static int in_scope(const char *section, const char *const *scope)
{
    size_t n;

    if (scope == NULL)
        return 1;
    for (; *scope; scope++) {
        n = strlen(*scope);
        if (n > 0 && (*scope)[n - 1] == '.' ? strncmp(section, *scope, n) == 0
                                            : strcmp(section, *scope) == 0)
            return 1;
    }
    return 0;
}

int ms_config_check_unknown(const ms_config *cfg, const char *const *scope, char *err,
                            size_t errlen)
{
    const struct section *sec;
    const struct entry *e;
    size_t i;

    for (i = 0; i < cfg->n; i++) {
        e = &cfg->entries[i];
        if (e->asked || !in_scope(e->section, scope))
            continue;
        sec = find_section(cfg, e->section);
        if (*e->section == '\0')
            snprintf(err, errlen, "%s:%d: key %s outside any [section]", cfg->path, e->line,
                     e->key);
        else if (!sec->asked)
            snprintf(err, errlen, "%s:%d: unknown section [%s]", cfg->path, sec->line, e->section);
        else
            snprintf(err, errlen, "%s:%d: unknown key [%s] %s", cfg->path, e->line, e->section,
                     e->key);
        return MS_ECONFIG;
    }
    return 0;
}

size_t ms_config_split_list(char *s, char **items, size_t max)
{
    size_t n = 0;
    char *tok, *save = NULL, *end;

    for (tok = strtok_r(s, ",", &save); tok && n < max; tok = strtok_r(NULL, ",", &save)) {
        while (isspace((unsigned char)*tok))
            tok++;
        end = tok + strlen(tok);
        while (end > tok && isspace((unsigned char)end[-1]))
            *--end = '\0';
        if (*tok)
            items[n++] = tok;
    }
    return n;
}
