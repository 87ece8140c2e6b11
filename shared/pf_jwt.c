
/*
 * Copyright (C) PayFlow
 *
 * Verification of the dashboard's JSON Web Tokens (RFC 7519), compact JWS
 * only, with HS256, RS256 or ES256 keys named in nginx.conf.
 *
 * The token is untrusted input until its signature checks out, so the order
 * is: structure, header, key, signature, and only then the payload's JSON
 * and claims.  The key is chosen by nginx.conf, never by the token: the
 * header's "alg" must match the algorithm the chosen key was configured
 * for, which is what keeps an RS256 public key from being used as an HMAC
 * secret.  Reasons given to the caller are fixed strings, safe to show a
 * client; nothing here logs, so the token never reaches a log.
 */


#include "pf_jwt.h"
#include "pf_conf.h"

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/hmac.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>


#define PF_JWT_LEEWAY          30
#define PF_JWT_FILE_MAX        65536
#define PF_JWT_SECRET_MIN      32
#define PF_JWT_RSA_BITS_MIN    2048
#define PF_JWT_HS256_LEN       32
#define PF_JWT_ES256_LEN       64     /* JOSE r || s, 32 bytes each */
#define PF_JWT_ES256_DER_MAX   72     /* SEQUENCE of two 33-byte INTEGERs */
#define PF_JWT_TENANT_MAX      64


static char *pf_jwt_conf_secret(ngx_conf_t *cf, pf_jwt_key_t *key,
    ngx_str_t *file, ngx_str_t *content);
static char *pf_jwt_conf_pkey(ngx_conf_t *cf, pf_jwt_key_t *key,
    ngx_str_t *file, ngx_str_t *content);
static EVP_PKEY *pf_jwt_pem_public_key(ngx_str_t *pem);
static void pf_jwt_secret_cleanup(void *data);
static void pf_jwt_pkey_cleanup(void *data);

static ngx_int_t pf_jwt_split(ngx_str_t *token, ngx_str_t *part);
static ngx_int_t pf_jwt_decode(ngx_pool_t *pool, ngx_str_t *src,
    ngx_str_t *dst);
static ngx_int_t pf_jwt_json(ngx_pool_t *pool, ngx_str_t *part,
    json_t **json);
static pf_jwt_key_t *pf_jwt_key(pf_jwt_conf_t *conf, json_t *header,
    const char **reason);
static ngx_int_t pf_jwt_signature(pf_jwt_key_t *key, ngx_str_t *input,
    ngx_str_t *sig);
static ngx_int_t pf_jwt_hmac_verify(pf_jwt_key_t *key, ngx_str_t *input,
    ngx_str_t *sig);
static ngx_int_t pf_jwt_ecdsa_verify(pf_jwt_key_t *key, ngx_str_t *input,
    ngx_str_t *sig);
static ngx_int_t pf_jwt_digest_verify(pf_jwt_key_t *key, ngx_str_t *input,
    u_char *sig, size_t len);
static ngx_int_t pf_jwt_claims(ngx_pool_t *pool, pf_jwt_conf_t *conf,
    json_t *payload, time_t now, pf_jwt_claims_t *claims,
    const char **reason);
static ngx_uint_t pf_jwt_audience(json_t *aud, ngx_str_t *audience);
static ngx_uint_t pf_jwt_tenant_valid(json_t *tenant);
static ngx_uint_t pf_jwt_string_eq(json_t *json, ngx_str_t *s);
static ngx_int_t pf_jwt_string_copy(ngx_pool_t *pool, json_t *json,
    ngx_str_t *dst);


/* indexed by pf_jwt_alg_e */

static ngx_str_t  pf_jwt_algs[] = {
    ngx_string("HS256"),
    ngx_string("RS256"),
    ngx_string("ES256")
};


static ngx_str_t  pf_jwt_roles[] = {
    ngx_string("owner"),
    ngx_string("admin"),
    ngx_string("developer"),
    ngx_string("viewer"),
    ngx_null_string
};


static ngx_str_t  pf_jwt_typ = ngx_string("JWT");
static ngx_str_t  pf_jwt_mode_test = ngx_string("test");
static ngx_str_t  pf_jwt_mode_live = ngx_string("live");


ngx_int_t
pf_jwt_conf_init(ngx_conf_t *cf, pf_jwt_conf_t *conf)
{
    if (ngx_array_init(&conf->keys, cf->pool, 4, sizeof(pf_jwt_key_t))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_str_null(&conf->issuer);
    ngx_str_null(&conf->audience);
    conf->leeway = PF_JWT_LEEWAY;

    return NGX_OK;
}


/*
 * payflow_jwt_key <name> alg=HS256|RS256|ES256 file=<path>;
 *
 * "alg" and "file" are the values, without their "alg=" and "file=".
 */

char *
pf_jwt_key_add(ngx_conf_t *cf, pf_jwt_conf_t *conf, ngx_str_t *name,
    ngx_str_t *alg, ngx_str_t *file)
{
    char          *rv;
    ngx_str_t      path, content;
    ngx_uint_t     i;
    pf_jwt_key_t   key, *keys, *k;

    if (name->len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "payflow_jwt_key: empty key name");
        return NGX_CONF_ERROR;
    }

    keys = conf->keys.elts;

    for (i = 0; i < conf->keys.nelts; i++) {
        if (keys[i].kid.len == name->len
            && ngx_strncmp(keys[i].kid.data, name->data, name->len) == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "payflow_jwt_key: duplicate key name \"%V\"",
                               name);
            return NGX_CONF_ERROR;
        }
    }

    ngx_memzero(&key, sizeof(pf_jwt_key_t));

    key.kid = *name;

    for (i = 0; i < sizeof(pf_jwt_algs) / sizeof(ngx_str_t); i++) {
        if (alg->len == pf_jwt_algs[i].len
            && ngx_strncmp(alg->data, pf_jwt_algs[i].data, alg->len) == 0)
        {
            break;
        }
    }

    if (i == sizeof(pf_jwt_algs) / sizeof(ngx_str_t)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "payflow_jwt_key: invalid algorithm \"%V\" for "
                           "key \"%V\", expected HS256, RS256 or ES256",
                           alg, name);
        return NGX_CONF_ERROR;
    }

    key.alg = (pf_jwt_alg_e) i;

    if (file->len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "payflow_jwt_key: no file for key \"%V\"", name);
        return NGX_CONF_ERROR;
    }

    /* open() needs a terminated name, which a slice of an argument may lack */

    path.len = file->len;
    path.data = ngx_pnalloc(cf->pool, file->len + 1);
    if (path.data == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memcpy(path.data, file->data, file->len);
    path.data[path.len] = '\0';

    if (ngx_conf_full_name(cf->cycle, &path, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (pf_conf_read_file(cf, "payflow_jwt_key", &path, PF_JWT_FILE_MAX,
                          &content)
        != NGX_CONF_OK)
    {
        return NGX_CONF_ERROR;
    }

    if (key.alg == PF_JWT_HS256) {
        rv = pf_jwt_conf_secret(cf, &key, &path, &content);

    } else {
        rv = pf_jwt_conf_pkey(cf, &key, &path, &content);
    }

    if (rv != NGX_CONF_OK) {
        return rv;
    }

    k = ngx_array_push(&conf->keys);
    if (k == NULL) {
        return NGX_CONF_ERROR;
    }

    *k = key;

    return NGX_CONF_OK;
}


static char *
pf_jwt_conf_secret(ngx_conf_t *cf, pf_jwt_key_t *key, ngx_str_t *file,
    ngx_str_t *content)
{
    size_t               len;
    ngx_str_t           *wipe;
    ngx_pool_cleanup_t  *cln;

    /* the whole file is wiped when the configuration goes away */

    cln = ngx_pool_cleanup_add(cf->pool, sizeof(ngx_str_t));
    if (cln == NULL) {
        ngx_explicit_memzero(content->data, content->len);
        return NGX_CONF_ERROR;
    }

    wipe = cln->data;
    *wipe = *content;

    cln->handler = pf_jwt_secret_cleanup;

    len = content->len;

    while (len && (content->data[len - 1] == '\n'
                   || content->data[len - 1] == '\r'))
    {
        len--;
    }

    if (len < PF_JWT_SECRET_MIN) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "payflow_jwt_key: HS256 secret of key \"%V\" in "
                           "\"%V\" is %uz bytes, at least %d are required",
                           &key->kid, file, len, PF_JWT_SECRET_MIN);
        return NGX_CONF_ERROR;
    }

    key->secret.data = content->data;
    key->secret.len = len;

    return NGX_CONF_OK;
}


static char *
pf_jwt_conf_pkey(ngx_conf_t *cf, pf_jwt_key_t *key, ngx_str_t *file,
    ngx_str_t *content)
{
    int                  bits;
    char                 group[64];
    size_t               len;
    EVP_PKEY            *pkey;
    ngx_pool_cleanup_t  *cln;

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        return NGX_CONF_ERROR;
    }

    pkey = pf_jwt_pem_public_key(content);
    if (pkey == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "payflow_jwt_key: no PEM public key or certificate "
                           "for key \"%V\" in \"%V\"", &key->kid, file);
        return NGX_CONF_ERROR;
    }

    cln->handler = pf_jwt_pkey_cleanup;
    cln->data = pkey;

    if (key->alg == PF_JWT_RS256) {

        if (!EVP_PKEY_is_a(pkey, "RSA")) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "payflow_jwt_key: key \"%V\" in \"%V\" is not "
                               "an RSA key, as RS256 requires",
                               &key->kid, file);
            return NGX_CONF_ERROR;
        }

        bits = EVP_PKEY_get_bits(pkey);

        if (bits < PF_JWT_RSA_BITS_MIN) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "payflow_jwt_key: RSA key \"%V\" in \"%V\" is "
                               "%d bits, at least %d are required",
                               &key->kid, file, bits, PF_JWT_RSA_BITS_MIN);
            return NGX_CONF_ERROR;
        }

    } else {

        if (!EVP_PKEY_is_a(pkey, "EC")
            || EVP_PKEY_get_group_name(pkey, group, sizeof(group), &len) != 1
            || OBJ_txt2nid(group) != NID_X9_62_prime256v1)
        {
            ERR_clear_error();

            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "payflow_jwt_key: key \"%V\" in \"%V\" is not "
                               "an EC P-256 key, as ES256 requires",
                               &key->kid, file);
            return NGX_CONF_ERROR;
        }
    }

    key->pkey = pkey;

    return NGX_CONF_OK;
}


/* a SubjectPublicKeyInfo ("PUBLIC KEY") or else a certificate's key */

static EVP_PKEY *
pf_jwt_pem_public_key(ngx_str_t *pem)
{
    BIO       *bio;
    X509      *x509;
    EVP_PKEY  *pkey;

    bio = BIO_new_mem_buf(pem->data, (int) pem->len);
    if (bio == NULL) {
        ERR_clear_error();
        return NULL;
    }

    pkey = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);

    BIO_free(bio);

    if (pkey == NULL) {
        bio = BIO_new_mem_buf(pem->data, (int) pem->len);
        if (bio == NULL) {
            ERR_clear_error();
            return NULL;
        }

        x509 = PEM_read_bio_X509(bio, NULL, NULL, NULL);

        BIO_free(bio);

        if (x509) {
            pkey = X509_get_pubkey(x509);
            X509_free(x509);
        }
    }

    /* a failed attempt leaves errors that nginx would later report */

    ERR_clear_error();

    return pkey;
}


static void
pf_jwt_secret_cleanup(void *data)
{
    ngx_str_t  *secret = data;

    ngx_explicit_memzero(secret->data, secret->len);
}


static void
pf_jwt_pkey_cleanup(void *data)
{
    EVP_PKEY_free(data);
}


ngx_int_t
pf_jwt_verify(ngx_pool_t *pool, pf_jwt_conf_t *conf, ngx_str_t *token,
    time_t now, pf_jwt_claims_t *claims, const char **reason)
{
    json_t        *header, *payload;
    ngx_int_t      rc;
    ngx_str_t      part[3], input, sig;
    pf_jwt_key_t  *key;

    ngx_memzero(claims, sizeof(pf_jwt_claims_t));

    *reason = "malformed token";

    if (token->len > PF_JWT_MAX_LEN || pf_jwt_split(token, part) != NGX_OK) {
        return NGX_DECLINED;
    }

    rc = pf_jwt_json(pool, &part[0], &header);
    if (rc != NGX_OK) {
        return rc;
    }

    key = pf_jwt_key(conf, header, reason);

    json_decref(header);

    if (key == NULL) {
        return NGX_DECLINED;
    }

    *reason = "malformed token";

    rc = pf_jwt_decode(pool, &part[2], &sig);
    if (rc != NGX_OK) {
        return rc;
    }

    /* the signing input is the token up to the second dot */

    input.data = token->data;
    input.len = part[1].data + part[1].len - token->data;

    rc = pf_jwt_signature(key, &input, &sig);
    if (rc != NGX_OK) {
        *reason = "invalid signature";
        return rc;
    }

    *reason = "malformed token";

    rc = pf_jwt_json(pool, &part[1], &payload);
    if (rc != NGX_OK) {
        return rc;
    }

    rc = pf_jwt_claims(pool, conf, payload, now, claims, reason);

    json_decref(payload);

    if (rc != NGX_OK) {
        return rc;
    }

    claims->kid = key->kid;

    return NGX_OK;
}


/* exactly three parts; header and payload must not be empty */

static ngx_int_t
pf_jwt_split(ngx_str_t *token, ngx_str_t *part)
{
    u_char      *p, *last, *dot;
    ngx_uint_t   i;

    p = token->data;
    last = token->data + token->len;

    for (i = 0; i < 2; i++) {
        dot = ngx_strlchr(p, last, '.');
        if (dot == NULL || dot == p) {
            return NGX_DECLINED;
        }

        part[i].data = p;
        part[i].len = dot - p;

        p = dot + 1;
    }

    if (ngx_strlchr(p, last, '.') != NULL) {
        return NGX_DECLINED;
    }

    part[2].data = p;
    part[2].len = last - p;

    return NGX_OK;
}


/*
 * Unpadded base64url, in its one canonical spelling: the unused low bits
 * of the last character must be zero, so that a token cannot be altered
 * without breaking its signature.  nginx's decoder stops at "=" and does
 * not look at those bits, hence the checks around it.
 */

static ngx_int_t
pf_jwt_decode(ngx_pool_t *pool, ngx_str_t *src, ngx_str_t *dst)
{
    ngx_str_t  check;

    if (ngx_strlchr(src->data, src->data + src->len, '=') != NULL) {
        return NGX_DECLINED;
    }

    dst->data = ngx_pnalloc(pool, ngx_base64_decoded_length(src->len) + 1);
    if (dst->data == NULL) {
        return NGX_ERROR;
    }

    if (ngx_decode_base64url(dst, src) != NGX_OK) {
        return NGX_DECLINED;
    }

    check.data = ngx_pnalloc(pool, ngx_base64_encoded_length(dst->len));
    if (check.data == NULL) {
        return NGX_ERROR;
    }

    ngx_encode_base64url(&check, dst);

    if (check.len != src->len
        || ngx_memcmp(check.data, src->data, src->len) != 0)
    {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


static ngx_int_t
pf_jwt_json(ngx_pool_t *pool, ngx_str_t *part, json_t **json)
{
    json_t     *root;
    ngx_int_t   rc;
    ngx_str_t   text;

    rc = pf_jwt_decode(pool, part, &text);
    if (rc != NGX_OK) {
        return rc;
    }

    root = json_loadb((const char *) text.data, text.len,
                      JSON_REJECT_DUPLICATES, NULL);

    if (!json_is_object(root)) {
        json_decref(root);
        return NGX_DECLINED;
    }

    *json = root;

    return NGX_OK;
}


static pf_jwt_key_t *
pf_jwt_key(pf_jwt_conf_t *conf, json_t *header, const char **reason)
{
    json_t        *alg, *typ, *kid;
    ngx_uint_t     i, n;
    pf_jwt_key_t  *keys, *key;

    *reason = "unsupported algorithm";

    alg = json_object_get(header, "alg");

    n = sizeof(pf_jwt_algs) / sizeof(ngx_str_t);

    for (i = 0; i < n; i++) {
        if (pf_jwt_string_eq(alg, &pf_jwt_algs[i])) {
            break;
        }
    }

    if (i == n) {
        return NULL;
    }

    *reason = "malformed token";

    typ = json_object_get(header, "typ");

    if (typ && !pf_jwt_string_eq(typ, &pf_jwt_typ)) {
        return NULL;
    }

    /* no extension is understood, so any critical one must be refused */

    if (json_object_get(header, "crit")) {
        return NULL;
    }

    kid = json_object_get(header, "kid");

    if (kid && !json_is_string(kid)) {
        return NULL;
    }

    *reason = "unknown key";

    keys = conf->keys.elts;
    key = NULL;

    if (kid) {
        for (n = 0; n < conf->keys.nelts; n++) {
            if (pf_jwt_string_eq(kid, &keys[n].kid)) {
                key = &keys[n];
                break;
            }
        }

    } else if (conf->keys.nelts == 1) {
        key = &keys[0];
    }

    if (key == NULL) {
        return NULL;
    }

    if (key->alg != (pf_jwt_alg_e) i) {
        *reason = "unsupported algorithm";
        return NULL;
    }

    return key;
}


static ngx_int_t
pf_jwt_signature(pf_jwt_key_t *key, ngx_str_t *input, ngx_str_t *sig)
{
    switch (key->alg) {

    case PF_JWT_HS256:
        return pf_jwt_hmac_verify(key, input, sig);

    case PF_JWT_RS256:
        return pf_jwt_digest_verify(key, input, sig->data, sig->len);

    case PF_JWT_ES256:
        return pf_jwt_ecdsa_verify(key, input, sig);
    }

    return NGX_DECLINED;
}


static ngx_int_t
pf_jwt_hmac_verify(pf_jwt_key_t *key, ngx_str_t *input, ngx_str_t *sig)
{
    u_char        md[EVP_MAX_MD_SIZE];
    unsigned int  len;

    if (sig->len != PF_JWT_HS256_LEN) {
        return NGX_DECLINED;
    }

    if (HMAC(EVP_sha256(), key->secret.data, (int) key->secret.len,
             input->data, input->len, md, &len)
        == NULL)
    {
        ERR_clear_error();
        return NGX_ERROR;
    }

    if (len != PF_JWT_HS256_LEN
        || CRYPTO_memcmp(md, sig->data, PF_JWT_HS256_LEN) != 0)
    {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


/* JOSE carries r and s as two fixed-size integers, OpenSSL wants DER */

static ngx_int_t
pf_jwt_ecdsa_verify(pf_jwt_key_t *key, ngx_str_t *input, ngx_str_t *sig)
{
    int         len;
    u_char      der[PF_JWT_ES256_DER_MAX], *p;
    BIGNUM     *r, *s;
    ECDSA_SIG  *es;

    if (sig->len != PF_JWT_ES256_LEN) {
        return NGX_DECLINED;
    }

    es = ECDSA_SIG_new();
    r = BN_bin2bn(sig->data, PF_JWT_ES256_LEN / 2, NULL);
    s = BN_bin2bn(sig->data + PF_JWT_ES256_LEN / 2, PF_JWT_ES256_LEN / 2,
                  NULL);

    if (es == NULL || r == NULL || s == NULL
        || ECDSA_SIG_set0(es, r, s) != 1)
    {
        ECDSA_SIG_free(es);
        BN_free(r);
        BN_free(s);
        ERR_clear_error();
        return NGX_ERROR;
    }

    /* es owns r and s from here on */

    len = i2d_ECDSA_SIG(es, NULL);

    if (len <= 0 || len > PF_JWT_ES256_DER_MAX) {
        ECDSA_SIG_free(es);
        ERR_clear_error();
        return NGX_ERROR;
    }

    p = der;
    len = i2d_ECDSA_SIG(es, &p);

    ECDSA_SIG_free(es);

    if (len <= 0) {
        ERR_clear_error();
        return NGX_ERROR;
    }

    return pf_jwt_digest_verify(key, input, der, len);
}


static ngx_int_t
pf_jwt_digest_verify(pf_jwt_key_t *key, ngx_str_t *input, u_char *sig,
    size_t len)
{
    int            rc;
    EVP_MD_CTX    *ctx;
    EVP_PKEY_CTX  *pctx;

    ctx = EVP_MD_CTX_new();
    if (ctx == NULL) {
        ERR_clear_error();
        return NGX_ERROR;
    }

    if (EVP_DigestVerifyInit(ctx, &pctx, EVP_sha256(), NULL, key->pkey) != 1
        || (key->alg == PF_JWT_RS256
            && EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) <= 0))
    {
        EVP_MD_CTX_free(ctx);
        ERR_clear_error();
        return NGX_ERROR;
    }

    rc = EVP_DigestVerify(ctx, sig, len, input->data, input->len);

    EVP_MD_CTX_free(ctx);

    if (rc != 1) {
        /* a wrong signature and a garbled one are alike to the client */
        ERR_clear_error();
        return NGX_DECLINED;
    }

    return NGX_OK;
}


static ngx_int_t
pf_jwt_claims(ngx_pool_t *pool, pf_jwt_conf_t *conf, json_t *payload,
    time_t now, pf_jwt_claims_t *claims, const char **reason)
{
    json_t      *exp, *nbf, *sub, *tenant, *role, *mode;
    ngx_uint_t   i;

    *reason = "invalid claims";

    /* compared as now - leeway, so that a huge "exp" cannot overflow */

    exp = json_object_get(payload, "exp");
    if (!json_is_integer(exp)) {
        return NGX_DECLINED;
    }

    if ((json_int_t) (now - conf->leeway) > json_integer_value(exp)) {
        *reason = "token expired";
        return NGX_DECLINED;
    }

    nbf = json_object_get(payload, "nbf");

    if (nbf) {
        if (!json_is_integer(nbf)) {
            return NGX_DECLINED;
        }

        if ((json_int_t) (now + conf->leeway) < json_integer_value(nbf)) {
            *reason = "token not yet valid";
            return NGX_DECLINED;
        }
    }

    if (conf->issuer.len
        && !pf_jwt_string_eq(json_object_get(payload, "iss"), &conf->issuer))
    {
        *reason = "invalid issuer";
        return NGX_DECLINED;
    }

    if (conf->audience.len
        && !pf_jwt_audience(json_object_get(payload, "aud"), &conf->audience))
    {
        *reason = "invalid audience";
        return NGX_DECLINED;
    }

    tenant = json_object_get(payload, "tenant");
    if (!pf_jwt_tenant_valid(tenant)) {
        return NGX_DECLINED;
    }

    role = json_object_get(payload, "role");

    for (i = 0; pf_jwt_roles[i].len; i++) {
        if (pf_jwt_string_eq(role, &pf_jwt_roles[i])) {
            break;
        }
    }

    if (pf_jwt_roles[i].len == 0) {
        return NGX_DECLINED;
    }

    mode = json_object_get(payload, "mode");

    if (pf_jwt_string_eq(mode, &pf_jwt_mode_live)) {
        claims->livemode = 1;

    } else if (!pf_jwt_string_eq(mode, &pf_jwt_mode_test)) {
        return NGX_DECLINED;
    }

    sub = json_object_get(payload, "sub");

    if (sub && !json_is_string(sub)) {
        return NGX_DECLINED;
    }

    if (pf_jwt_string_copy(pool, tenant, &claims->tenant) != NGX_OK
        || pf_jwt_string_copy(pool, role, &claims->role) != NGX_OK
        || (sub && pf_jwt_string_copy(pool, sub, &claims->subject) != NGX_OK))
    {
        return NGX_ERROR;
    }

    claims->exp = (time_t) json_integer_value(exp);

    return NGX_OK;
}


/* "aud" is a string or an array of strings, RFC 7519 section 4.1.3 */

static ngx_uint_t
pf_jwt_audience(json_t *aud, ngx_str_t *audience)
{
    size_t       i;
    json_t      *value;
    ngx_uint_t   found;

    if (json_is_string(aud)) {
        return pf_jwt_string_eq(aud, audience);
    }

    if (!json_is_array(aud)) {
        return 0;
    }

    found = 0;

    json_array_foreach(aud, i, value) {
        if (!json_is_string(value)) {
            return 0;
        }

        if (pf_jwt_string_eq(value, audience)) {
            found = 1;
        }
    }

    return found;
}


static ngx_uint_t
pf_jwt_tenant_valid(json_t *tenant)
{
    u_char       ch;
    size_t       i, len;
    const char  *s;

    if (!json_is_string(tenant)) {
        return 0;
    }

    s = json_string_value(tenant);
    len = json_string_length(tenant);

    if (len == 0 || len > PF_JWT_TENANT_MAX) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        ch = (u_char) s[i];

        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')
              || (ch >= '0' && ch <= '9') || ch == '_'))
        {
            return 0;
        }
    }

    return 1;
}


/* json may be NULL or of any type */

static ngx_uint_t
pf_jwt_string_eq(json_t *json, ngx_str_t *s)
{
    return json_is_string(json)
           && json_string_length(json) == s->len
           && ngx_memcmp(json_string_value(json), s->data, s->len) == 0;
}


static ngx_int_t
pf_jwt_string_copy(ngx_pool_t *pool, json_t *json, ngx_str_t *dst)
{
    dst->len = json_string_length(json);

    dst->data = ngx_pnalloc(pool, dst->len + 1);
    if (dst->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(dst->data, json_string_value(json), dst->len);
    dst->data[dst->len] = '\0';

    return NGX_OK;
}
