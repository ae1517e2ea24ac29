package io.rung.registry;

import io.apicurio.common.apps.config.DynamicConfigPropertyList;
import java.util.List;
import javax.enterprise.context.ApplicationScoped;
import javax.enterprise.inject.Produces;
import javax.inject.Singleton;

/**
 * Apicurio's list of run-time editable ("dynamic") settings, made empty.
 *
 * <p>Upstream, a Quarkus extension (apicurio-common-app-components-config-index) builds
 * this list at build time; its deployment half is not on Maven Central, so rung's build
 * leaves the extension out and produces the bean here. The effect: no setting can be
 * changed through the registry's admin config API at run time; every setting still comes
 * from the command line (-D...) or the environment, which is all the local stack uses.
 */
@ApplicationScoped
public class DynamicConfigProperties {

    @Produces
    @Singleton
    DynamicConfigPropertyList dynamicConfigPropertyList() {
        return new DynamicConfigPropertyList(List.of());
    }
}
