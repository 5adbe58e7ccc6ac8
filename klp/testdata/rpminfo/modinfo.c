/*
 * Fake kernel module for klp/rpminfo_test.go: an ELF relocatable object
 * whose .modinfo section holds NUL-terminated key=value strings, as a
 * real .ko's does. Each key is present only when its macro is defined,
 * e.g. -DMI_LIVEPATCH='"Y"'; -DMI_NO_MODINFO leaves the section out.
 */
#ifndef MI_NO_MODINFO
#define MODINFO(id, kv) \
	static const char id[] __attribute__((section(".modinfo"), used, aligned(1))) = kv

#ifdef MI_LIVEPATCH
MODINFO(mi_livepatch, "livepatch=" MI_LIVEPATCH);
#endif
#ifdef MI_VERMAGIC
MODINFO(mi_vermagic, "vermagic=" MI_VERMAGIC);
#endif
#ifdef MI_NAME
MODINFO(mi_name, "name=" MI_NAME);
#endif
MODINFO(mi_license, "license=GPL");
#endif

int klp_fixture_dummy(void) { return 0; }
