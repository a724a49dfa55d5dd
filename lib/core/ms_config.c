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

struct entry {
    char *section;
    char *key;
    char *value;
};

struct ms_config {
    struct entry *entries;
    size_t n, cap;
    const char **sections;
    size_t nsections, capsections;
    /* Environment values handed out by ms_config_get, kept so they outlive
     * later getenv calls. */
    char **env_values;
    size_t nenv;
};

static int on_entry(void *user, const char *section, const char *key, const char *value)
{
    ms_config *cfg = user;
    size_t i;

    if (key == NULL) { /* new section (INI_CALL_HANDLER_ON_NEW_SECTION) */
        for (i = 0; i < cfg->nsections; i++)
            if (strcmp(cfg->sections[i], section) == 0)
                return 1;
        if (cfg->nsections == cfg->capsections) {
            cfg->capsections = cfg->capsections ? cfg->capsections * 2 : 8;
            cfg->sections = ms_realloc(cfg->sections, cfg->capsections * sizeof(char *));
        }
        cfg->sections[cfg->nsections++] = ms_strdup(section);
        return 1;
    }
    if (cfg->n == cfg->cap) {
        cfg->cap = cfg->cap ? cfg->cap * 2 : 32;
        cfg->entries = ms_realloc(cfg->entries, cfg->cap * sizeof(struct entry));
    }
    cfg->entries[cfg->n].section = ms_strdup(section);
    cfg->entries[cfg->n].key = ms_strdup(key);
    cfg->entries[cfg->n].value = ms_strdup(value);
    cfg->n++;
    /* inih reports the section on its first key when new-section calls are
     * not compiled in (Debian's build); record it here too. */
    return on_entry(user, section, NULL, NULL);
}

ms_config *ms_config_load(const char *path, char *err, size_t errlen)
{
    ms_config *cfg = ms_calloc(1, sizeof(*cfg));
    int r;

    if (path == NULL)
        return cfg;
    r = ini_parse(path, on_entry, cfg);
    if (r < 0) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        ms_config_free(cfg);
        return NULL;
    }
    if (r > 0) {
        snprintf(err, errlen, "%s:%d: syntax error", path, r);
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
        free((char *)cfg->sections[i]);
    for (i = 0; i < cfg->nenv; i++)
        free(cfg->env_values[i]);
    free(cfg->entries);
    free(cfg->sections);
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

const char *ms_config_get(const ms_config *cfg, const char *section, const char *key,
                          const char *def)
{
    ms_config *mcfg = (ms_config *)cfg;
    char name[256];
    const char *env;
    size_t i;

    env_name(name, sizeof(name), section, key);
    if ((env = getenv(name)) != NULL) {
        for (i = 0; i < mcfg->nenv; i++)
            if (strcmp(mcfg->env_values[i], env) == 0)
                return mcfg->env_values[i];
        mcfg->env_values = ms_realloc(mcfg->env_values, (mcfg->nenv + 1) * sizeof(char *));
        mcfg->env_values[mcfg->nenv] = ms_strdup(env);
        return mcfg->env_values[mcfg->nenv++];
    }
    /* The last occurrence wins, as in most INI dialects. */
    for (i = cfg->n; i-- > 0;)
        if (strcmp(cfg->entries[i].section, section) == 0 &&
            strcmp(cfg->entries[i].key, key) == 0)
            return cfg->entries[i].value;
    return def;
}

int ms_config_get_int(const ms_config *cfg, const char *section, const char *key, int64_t def,
                      int64_t min, int64_t max, int64_t *out)
{
    const char *s = ms_config_get(cfg, section, key, NULL);
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
    ms_warn("event=config_error section=%s key=%s value=\"%s\" want=\"integer in [%lld, %lld]\"",
            section, key, s, (long long)min, (long long)max);
    return MS_ECONFIG;
}

size_t ms_config_sections(const ms_config *cfg, const char *prefix, const char *const **names)
{
    /* Sections are kept in file order; callers filter by prefix themselves
     * through this compacted view. */
    ms_config *mcfg = (ms_config *)cfg;
    size_t i, n = 0, plen = strlen(prefix);
    const char *tmp;

    for (i = 0; i < mcfg->nsections; i++) {
        if (strncmp(mcfg->sections[i], prefix, plen) == 0) {
            tmp = mcfg->sections[i];
            memmove(&mcfg->sections[n + 1], &mcfg->sections[n], (i - n) * sizeof(char *));
            mcfg->sections[n++] = tmp;
        }
    }
    *names = mcfg->sections;
    return n;
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
